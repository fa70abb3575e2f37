//! Typed access to the pinned load-balancing maps: program services,
//! remove them, and read back what the datapath holds.

// foldhash: the index is hashed some 200 000 times per 10 000 services;
// SipHash made planning a third of the programming time.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::SocketAddrV4;
use std::path::Path;

use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};
use serde::Serialize;

use crate::encode::{self, bytes_of, from_bytes};
use crate::maglev;
use crate::model::{Backend, Frontend};
use crate::skel::types::{
    lb4_affinity, lb4_affinity_key, lb4_backend, lb4_key, lb4_maglev, lb4_service,
};
use crate::Error;

/// File name of the services map under a pin directory.
pub(crate) const SERVICES_MAP: &str = "lb4_services";
/// File name of the backends map under a pin directory.
pub(crate) const BACKENDS_MAP: &str = "lb4_backends";
/// File name of the session-affinity map under a pin directory.
pub(crate) const AFFINITY_MAP: &str = "lb4_affinity";
/// File name of the Maglev tables map under a pin directory.
pub(crate) const MAGLEV_MAP: &str = "lb4_maglev";

/// Most backends one frontend can have (slots are 16-bit, slot 0 is the
/// master entry).
const MAX_BACKENDS: usize = u16::MAX as usize;

/// Sizes of the load-balancing maps, set when they are first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of `lb4_services`: one per frontend plus one per backend slot.
    pub services: u32,
    /// Entries of `lb4_backends`: one per distinct backend.
    pub backends: u32,
    /// Entries of `lb4_reverse_sk` (LRU): one per socket and backend it
    /// talked to through a frontend.
    pub reverse: u32,
    /// Entries of `lb4_affinity` (LRU): one per client and frontend with
    /// session affinity.
    pub affinity: u32,
    /// Entries of `lb4_maglev`: one lookup table (4 KiB) per frontend
    /// using Maglev.
    pub maglev: u32,
    /// Entries of `lb4_ct` (LRU): two per connection translated at tc.
    pub ct: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 65536,
            backends: 65536,
            reverse: 262144,
            affinity: 65536,
            maglev: 1024,
            ct: 262144,
        }
    }
}

/// A frontend as the datapath holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    /// The virtual address.
    pub frontend: Frontend,
    /// The master entry's flags.
    pub flags: u16,
    /// Flows from outside the node are hashed onto a Maglev table
    /// (consistent across nodes) instead of a random slot.
    pub maglev: bool,
    /// Session affinity (ClientIP) timeout in seconds, when on.
    pub affinity_timeout: Option<u32>,
    /// Backend slots, in slot order (slot 1 first).
    pub slots: Vec<SlotEntry>,
}

/// The mirror of one frontend's entries in the services map.
#[derive(Debug, Clone, Default)]
struct Held {
    master: Option<lb4_service>,
    /// Backend id per slot (slot 1 first); `None` where a slot is missing.
    ids: Vec<Option<u32>>,
}

/// Writes planned for the kernel, applied in this order: new backends,
/// slots, master entries, deletions of surplus slots, then backends no
/// slot points at.
#[derive(Debug, Default)]
struct Writes {
    backend_keys: Vec<u32>,
    backend_values: Vec<lb4_backend>,
    slot_keys: Vec<lb4_key>,
    slot_values: Vec<lb4_service>,
    master_keys: Vec<lb4_key>,
    master_values: Vec<lb4_service>,
    deletes: Vec<lb4_key>,
    released: Vec<u32>,
    affinity_checks: Vec<Frontend>,
    maglev: Vec<(lb4_key, Box<lb4_maglev>)>,
}

/// A client pinned to a backend by session affinity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffinityEntry {
    /// The client: its network namespace's cookie.
    pub client: u64,
    /// The frontend.
    pub frontend: Frontend,
    /// The backend id it is pinned to.
    pub backend_id: u32,
    /// That backend, if its id has an entry.
    pub backend: Option<Backend>,
    /// Last use, nanoseconds on the kernel's monotonic clock.
    pub last_used_ns: u64,
}

/// One backend slot of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotEntry {
    /// Slot number, from 1.
    pub slot: u16,
    /// Key into `lb4_backends`.
    pub backend_id: u32,
    /// The backend, or `None` if the id has no entry (an inconsistency the
    /// datapath answers by refusing the connection).
    pub backend: Option<Backend>,
}

/// The load-balancing maps of one node, opened from their pins.
///
/// Backend ids are shared between frontends: a backend used by several
/// services has one entry, released when the last service drops it. The id
/// index is rebuilt from the maps when they are opened, so ids survive a
/// restart of whoever programs them.
#[derive(Debug)]
pub struct LbMaps {
    services: MapHandle,
    backends: MapHandle,
    affinity: MapHandle,
    maglev: MapHandle,
    /// Backend -> its id in `lb4_backends`.
    backend_ids: HashMap<Backend, u32>,
    /// Backend id -> its backend (the reverse of `backend_ids`).
    id_backends: HashMap<u32, Backend>,
    /// Backend id -> number of slots pointing at it.
    refs: HashMap<u32, u32>,
    /// What the services map holds per frontend: master entry and slot ids
    /// (a mirror, so writes need no lookups).
    held: HashMap<Frontend, Held>,
    /// Where the search for a free backend id starts.
    next_id: u32,
    /// Entries in `lb4_services` (masters and slots), to refuse a write
    /// that would not fit before any of it is made.
    service_count: u32,
}

impl LbMaps {
    /// Opens the maps pinned under `pin_dir` (as [`crate::SockLb`] pins
    /// them) and indexes the backends they hold.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, Error> {
        let open = |name: &str| {
            let path = pin_dir.join(name);
            MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))
        };
        let mut maps = LbMaps {
            services: open(SERVICES_MAP)?,
            backends: open(BACKENDS_MAP)?,
            affinity: open(AFFINITY_MAP)?,
            maglev: open(MAGLEV_MAP)?,
            backend_ids: HashMap::new(),
            id_backends: HashMap::new(),
            refs: HashMap::new(),
            held: HashMap::new(),
            next_id: 1,
            service_count: 0,
        };
        maps.reindex()?;
        Ok(maps)
    }

    /// Rebuilds the backend index, reference counts and the mirror of the
    /// services map from the maps.
    fn reindex(&mut self) -> Result<(), Error> {
        self.backend_ids.clear();
        self.id_backends.clear();
        self.refs.clear();
        self.held.clear();
        for (id, entry) in self.backend_entries()? {
            if let Some(backend) = encode::entry_backend(&entry) {
                self.backend_ids.insert(backend, id);
                self.id_backends.insert(id, backend);
            }
            self.refs.insert(id, 0);
        }
        let services = self.service_entries()?;
        self.service_count = u32::try_from(services.len()).unwrap_or(u32::MAX);
        let mut slots = Vec::new();
        for (key, value) in services {
            let Some((frontend, slot)) = encode::key_frontend(&key) else {
                continue;
            };
            if slot == 0 {
                self.held.entry(frontend).or_default().master = Some(value);
            } else {
                *self.refs.entry(value.backend_id).or_insert(0) += 1;
                slots.push((frontend, slot, value.backend_id));
            }
        }
        for (frontend, slot, id) in slots {
            let held = self.held.entry(frontend).or_default();
            let index = usize::from(slot) - 1;
            if held.ids.len() <= index {
                held.ids.resize(index + 1, None);
            }
            held.ids[index] = Some(id);
        }
        for held in self.held.values_mut() {
            let count = held.master.map_or(0, |m| usize::from(m.count));
            held.ids.resize(count, None);
        }
        self.next_id = self
            .refs
            .keys()
            .max()
            .map_or(1, |max| max.wrapping_add(1).max(1));
        Ok(())
    }

    /// Sets `frontend`'s backends to `backends` (duplicates ignored), writing
    /// only the entries that change. An empty list keeps the frontend with
    /// no backend, which refuses connections. A change that does not fit
    /// the maps is refused whole ([`Error::MapFull`]) before any write.
    ///
    /// Order keeps the datapath consistent at every step: backends first,
    /// then slots, then the master entry's count, then surplus slots.
    pub fn upsert_service(
        &mut self,
        frontend: &Frontend,
        backends: &[Backend],
    ) -> Result<(), Error> {
        let mut results = self.upsert_services(&[(*frontend, backends.to_vec())])?;
        results.pop().unwrap_or(Ok(()))
    }

    /// [`LbMaps::upsert_service`] for many frontends at once, with one
    /// batch write per map for all of them (how 10 000 services are
    /// programmed in a fraction of a second). Returns each frontend's
    /// outcome; a frontend that does not fit is refused whole and the
    /// others are still written. `Err` when a write to the kernel failed
    /// (the maps are then re-read).
    pub fn upsert_services(
        &mut self,
        changes: &[(Frontend, Vec<Backend>)],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let mut writes = Writes::default();
        let outcomes: Vec<Result<(), Error>> = changes
            .iter()
            .map(|(frontend, backends)| self.plan_service(frontend, backends, &mut writes))
            .collect();
        if let Err(e) = self.apply(&writes) {
            self.reindex()?;
            return Err(e);
        }
        // Refusals happen before any state changes; anything else may have
        // left the index half-updated: re-read it.
        let refused =
            |e: &Error| matches!(e, Error::MapFull { .. } | Error::TooManyBackends { .. });
        if outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(|e| !refused(e)))
        {
            self.reindex()?;
        }
        for frontend in &writes.affinity_checks {
            let kept: HashSet<u32> = self
                .held
                .get(frontend)
                .map(|h| h.ids.iter().flatten().copied().collect())
                .unwrap_or_default();
            self.forget_affinity(frontend, |id| !kept.contains(&id))?;
        }
        Ok(outcomes)
    }

    /// Works out the writes that take `frontend` to `backends`, updating
    /// the in-memory state as if they were made.
    fn plan_service(
        &mut self,
        frontend: &Frontend,
        backends: &[Backend],
        writes: &mut Writes,
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        let wanted: Vec<Backend> = backends
            .iter()
            .copied()
            .filter(|b| seen.insert(*b))
            .collect();
        if wanted.len() > MAX_BACKENDS {
            return Err(Error::TooManyBackends {
                frontend: frontend.to_string(),
                count: wanted.len(),
                max: MAX_BACKENDS,
            });
        }
        let old = self.held.get(frontend).cloned().unwrap_or_default();
        let added = u32::from(old.master.is_none())
            + u32::try_from(wanted.len().saturating_sub(old.ids.len())).unwrap_or(u32::MAX);
        let removed = u32::try_from(old.ids.len().saturating_sub(wanted.len())).unwrap_or(0);
        if self.service_count.saturating_add(added) > self.services.max_entries() {
            return Err(Error::MapFull {
                map: SERVICES_MAP,
                max_entries: self.services.max_entries(),
            });
        }
        let new_backends = wanted
            .iter()
            .filter(|b| !self.backend_ids.contains_key(b))
            .count();
        if self.refs.len() + new_backends > self.backends.max_entries() as usize {
            return Err(Error::MapFull {
                map: BACKENDS_MAP,
                max_entries: self.backends.max_entries(),
            });
        }

        let mut new_ids = Vec::with_capacity(wanted.len());
        for backend in &wanted {
            let id = match self.backend_ids.get(backend) {
                Some(id) => *id,
                None => {
                    let id = self.free_id()?;
                    writes.backend_keys.push(id);
                    writes.backend_values.push(encode::backend_entry(backend));
                    self.backend_ids.insert(*backend, id);
                    self.id_backends.insert(id, *backend);
                    self.refs.insert(id, 0);
                    id
                }
            };
            *self.refs.entry(id).or_insert(0) += 1;
            new_ids.push(id);
        }
        for (i, id) in new_ids.iter().enumerate() {
            if old.ids.get(i) != Some(&Some(*id)) {
                writes
                    .slot_keys
                    .push(encode::service_key(frontend, slot_number(i)));
                writes.slot_values.push(encode::slot_entry(*id));
            }
        }
        let count = u16::try_from(new_ids.len()).unwrap_or(u16::MAX);
        let flags = old.master.map_or(0, |m| m.flags);
        let timeout = old.master.map_or(0, |m| m.backend_id);
        let master = encode::master_entry(count, flags, timeout);
        if old.master.map(|m| m.count) != Some(count) {
            writes.master_keys.push(encode::service_key(frontend, 0));
            writes.master_values.push(master);
        }
        for i in new_ids.len()..old.ids.len() {
            writes
                .deletes
                .push(encode::service_key(frontend, slot_number(i)));
        }
        self.drop_refs(&old.ids, &mut writes.released);
        // Clients pinned to a backend this frontend no longer has start
        // over (only a frontend with affinity can have pinned clients).
        if flags & encode::FLAG_AFFINITY != 0 {
            writes.affinity_checks.push(*frontend);
        }
        if flags & encode::FLAG_MAGLEV != 0 {
            let table = self.maglev_entry(&new_ids);
            writes
                .maglev
                .push((encode::service_key(frontend, 0), table));
        }
        self.service_count = self
            .service_count
            .saturating_add(added)
            .saturating_sub(removed);
        self.held.insert(
            *frontend,
            Held {
                master: Some(master),
                ids: new_ids.into_iter().map(Some).collect(),
            },
        );
        Ok(())
    }

    /// Makes `writes` in the kernel, in the consistent order, and deletes
    /// backends no slot points at any more.
    fn apply(&mut self, writes: &Writes) -> Result<(), Error> {
        update_batch(
            &self.backends,
            BACKENDS_MAP,
            &writes.backend_keys,
            &writes.backend_values,
        )?;
        update_batch(
            &self.services,
            SERVICES_MAP,
            &writes.slot_keys,
            &writes.slot_values,
        )?;
        update_batch(
            &self.services,
            SERVICES_MAP,
            &writes.master_keys,
            &writes.master_values,
        )?;
        for (key, table) in &writes.maglev {
            self.maglev
                .update(bytes_of(key), bytes_of(table.as_ref()), MapFlags::ANY)
                .map_err(|e| Error::bpf(format!("update {MAGLEV_MAP}"), e))?;
        }
        for key in &writes.deletes {
            self.delete_service_key(key)?;
        }
        for id in &writes.released {
            if self.refs.get(id) == Some(&0) {
                self.refs.remove(id);
                if let Some(backend) = self.id_backends.remove(id) {
                    self.backend_ids.remove(&backend);
                }
                delete_key(&self.backends, BACKENDS_MAP, bytes_of(id))?;
            }
        }
        Ok(())
    }

    /// Turns session affinity of `frontend` on (with its timeout in
    /// seconds) or off. The frontend must exist. Returns whether anything
    /// changed; turning it off forgets every client's backend.
    pub fn set_affinity(
        &mut self,
        frontend: &Frontend,
        timeout: Option<u32>,
    ) -> Result<bool, Error> {
        let Some(master) = self.held.get(frontend).and_then(|h| h.master) else {
            return Err(Error::NoSuchFrontend(frontend.to_string()));
        };
        let flags = match timeout {
            Some(_) => master.flags | encode::FLAG_AFFINITY,
            None => master.flags & !encode::FLAG_AFFINITY,
        };
        let seconds = timeout.unwrap_or(0);
        if flags == master.flags && seconds == master.backend_id {
            return Ok(false);
        }
        let entry = encode::master_entry(master.count, flags, seconds);
        self.put_service(&encode::service_key(frontend, 0), &entry)?;
        if let Some(held) = self.held.get_mut(frontend) {
            held.master = Some(entry);
        }
        if timeout.is_none() {
            self.forget_affinity(frontend, |_| true)?;
        }
        Ok(true)
    }

    /// Every client's pinned backend: (client netns cookie, frontend,
    /// backend id, nanoseconds of the last use on the kernel's monotonic
    /// clock).
    pub fn affinities(&self) -> Result<Vec<AffinityEntry>, Error> {
        let backends: HashMap<u32, lb4_backend> = self.backend_entries()?.into_iter().collect();
        let mut out: Vec<AffinityEntry> =
            entries::<lb4_affinity_key, lb4_affinity>(&self.affinity, AFFINITY_MAP)?
                .into_iter()
                .filter_map(|(key, value)| {
                    Some(AffinityEntry {
                        client: key.client,
                        frontend: encode::affinity_frontend(&key)?,
                        backend_id: value.backend_id,
                        backend: backends
                            .get(&value.backend_id)
                            .and_then(encode::entry_backend),
                        last_used_ns: value.last_used_ns,
                    })
                })
                .collect();
        out.sort_by_key(|a| (a.frontend, a.client));
        Ok(out)
    }

    /// Removes affinity entries of `frontend` whose backend id `drop`s.
    fn forget_affinity(
        &self,
        frontend: &Frontend,
        drop: impl Fn(u32) -> bool,
    ) -> Result<(), Error> {
        for (key, value) in entries::<lb4_affinity_key, lb4_affinity>(&self.affinity, AFFINITY_MAP)?
        {
            if encode::affinity_frontend(&key).as_ref() == Some(frontend) && drop(value.backend_id)
            {
                delete_key(&self.affinity, AFFINITY_MAP, bytes_of(&key))?;
            }
        }
        Ok(())
    }

    /// Removes `frontend` and releases backends no other frontend uses.
    /// Returns whether it was present.
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<bool, Error> {
        let Some(held) = self.held.remove(frontend) else {
            return Ok(false);
        };
        let mut writes = Writes::default();
        writes.deletes.push(encode::service_key(frontend, 0));
        for i in 0..held.ids.len() {
            writes
                .deletes
                .push(encode::service_key(frontend, slot_number(i)));
        }
        self.drop_refs(&held.ids, &mut writes.released);
        let removed = u32::try_from(held.ids.len() + 1).unwrap_or(u32::MAX);
        self.service_count = self.service_count.saturating_sub(removed);
        if let Err(e) = self.apply(&writes) {
            self.reindex()?;
            return Err(e);
        }
        if held
            .master
            .is_some_and(|m| m.flags & encode::FLAG_AFFINITY != 0)
        {
            self.forget_affinity(frontend, |_| true)?;
        }
        if held
            .master
            .is_some_and(|m| m.flags & encode::FLAG_MAGLEV != 0)
        {
            delete_key(
                &self.maglev,
                MAGLEV_MAP,
                bytes_of(&encode::service_key(frontend, 0)),
            )?;
        }
        Ok(true)
    }

    /// Turns Maglev selection of `frontend` on (writing its table from its
    /// current backends; rewritten whenever they change) or off. The
    /// frontend must exist. Returns whether anything changed.
    pub fn set_maglev(&mut self, frontend: &Frontend, on: bool) -> Result<bool, Error> {
        let Some(held) = self.held.get(frontend).cloned() else {
            return Err(Error::NoSuchFrontend(frontend.to_string()));
        };
        let Some(master) = held.master else {
            return Err(Error::NoSuchFrontend(frontend.to_string()));
        };
        let flags = if on {
            master.flags | encode::FLAG_MAGLEV
        } else {
            master.flags & !encode::FLAG_MAGLEV
        };
        if flags == master.flags {
            return Ok(false);
        }
        let key = encode::service_key(frontend, 0);
        if on {
            let ids: Vec<u32> = held.ids.iter().flatten().copied().collect();
            let table = self.maglev_entry(&ids);
            self.maglev
                .update(bytes_of(&key), bytes_of(table.as_ref()), MapFlags::ANY)
                .map_err(|e| Error::bpf(format!("update {MAGLEV_MAP}"), e))?;
        }
        let entry = encode::master_entry(master.count, flags, master.backend_id);
        self.put_service(&key, &entry)?;
        if !on {
            delete_key(&self.maglev, MAGLEV_MAP, bytes_of(&key))?;
        }
        if let Some(held) = self.held.get_mut(frontend) {
            held.master = Some(entry);
        }
        Ok(true)
    }

    /// The Maglev table of a frontend whose slots hold backend `ids`.
    fn maglev_entry(&self, ids: &[u32]) -> Box<lb4_maglev> {
        let known: Vec<(u32, Backend)> = ids
            .iter()
            .filter_map(|id| self.id_backends.get(id).map(|b| (*id, *b)))
            .collect();
        let backends: Vec<Backend> = known.iter().map(|(_, b)| *b).collect();
        let mut entry = Box::<lb4_maglev>::default();
        for (slot, owner) in entry.backend_ids.iter_mut().zip(maglev::table(&backends)) {
            *slot = known[owner].0;
        }
        entry
    }

    /// The backend the tc path gives a new flow from `client` to a Maglev
    /// `frontend`: (table entry, backend id, backend). `None` when the
    /// frontend has no table.
    pub fn maglev_choice(
        &self,
        frontend: &Frontend,
        client: SocketAddrV4,
    ) -> Result<Option<(usize, u32, Option<Backend>)>, Error> {
        let key = encode::service_key(frontend, 0);
        let Some(bytes) = self
            .maglev
            .lookup(bytes_of(&key), MapFlags::ANY)
            .map_err(|e| Error::bpf(format!("read {MAGLEV_MAP}"), e))?
        else {
            return Ok(None);
        };
        let table: lb4_maglev = from_bytes(MAGLEV_MAP, &bytes)?;
        let hash = maglev::flow_hash(client, frontend.addr.port(), frontend.proto.number());
        let entry = hash as usize % maglev::SIZE;
        let id = table.backend_ids[entry];
        Ok(Some((entry, id, self.id_backends.get(&id).copied())))
    }

    /// How full the preallocated maps are: (map, entries used, capacity).
    pub fn fill(&self) -> Vec<(&'static str, u32, u32)> {
        let maglev = self
            .held
            .values()
            .filter(|h| h.master.is_some_and(|m| m.flags & encode::FLAG_MAGLEV != 0))
            .count();
        vec![
            (
                SERVICES_MAP,
                self.service_count,
                self.services.max_entries(),
            ),
            (
                BACKENDS_MAP,
                u32::try_from(self.refs.len()).unwrap_or(u32::MAX),
                self.backends.max_entries(),
            ),
            (
                MAGLEV_MAP,
                u32::try_from(maglev).unwrap_or(u32::MAX),
                self.maglev.max_entries(),
            ),
        ]
    }

    /// Every frontend in the datapath, sorted, with its slots resolved.
    /// Read from the index, which mirrors the maps as they were when they
    /// were opened plus every write since: no system call, so a reconciler
    /// can ask on every pass.
    pub fn services(&self) -> Result<Vec<ServiceEntry>, Error> {
        let mut entries: Vec<ServiceEntry> = self
            .held
            .iter()
            .filter_map(|(frontend, held)| {
                let master = held.master?;
                Some(ServiceEntry {
                    frontend: *frontend,
                    flags: master.flags,
                    maglev: master.flags & encode::FLAG_MAGLEV != 0,
                    affinity_timeout: (master.flags & encode::FLAG_AFFINITY != 0)
                        .then_some(master.backend_id),
                    slots: held
                        .ids
                        .iter()
                        .enumerate()
                        .filter_map(|(i, id)| {
                            let id = (*id)?;
                            Some(SlotEntry {
                                slot: slot_number(i),
                                backend_id: id,
                                backend: self.id_backends.get(&id).copied(),
                            })
                        })
                        .collect(),
                })
            })
            .collect();
        entries.sort_by_key(|e| e.frontend);
        Ok(entries)
    }

    /// Drops one reference for each slot id; the ids go to `released` so
    /// that backends left unused are deleted after the slots.
    fn drop_refs(&mut self, ids: &[Option<u32>], released: &mut Vec<u32>) {
        for id in ids.iter().flatten() {
            if let Some(refs) = self.refs.get_mut(id) {
                *refs = refs.saturating_sub(1);
            }
            released.push(*id);
        }
    }

    fn free_id(&mut self) -> Result<u32, Error> {
        let start = self.next_id;
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.refs.contains_key(&id) {
                return Ok(id);
            }
            if self.next_id == start {
                return Err(Error::BackendIdsExhausted);
            }
        }
    }

    fn put_service(&self, key: &lb4_key, value: &lb4_service) -> Result<(), Error> {
        self.services
            .update(bytes_of(key), bytes_of(value), MapFlags::ANY)
            .map_err(|e| map_write_error(SERVICES_MAP, &self.services, e))
    }

    fn delete_service_key(&self, key: &lb4_key) -> Result<(), Error> {
        delete_key(&self.services, SERVICES_MAP, bytes_of(key))
    }

    fn service_entries(&self) -> Result<Vec<(lb4_key, lb4_service)>, Error> {
        entries(&self.services, SERVICES_MAP)
    }

    fn backend_entries(&self) -> Result<Vec<(u32, lb4_backend)>, Error> {
        entries(&self.backends, BACKENDS_MAP)
    }
}

/// Writes `keys[i]` → `values[i]` with one system call.
fn update_batch<K: encode::MapEntry, V: encode::MapEntry>(
    map: &MapHandle,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<(), Error> {
    let Ok(count) = u32::try_from(keys.len()) else {
        return Err(Error::MapFull {
            map: name,
            max_entries: map.max_entries(),
        });
    };
    if count == 0 {
        return Ok(());
    }
    let key_bytes: Vec<u8> = keys
        .iter()
        .flat_map(|k| bytes_of(k).iter().copied())
        .collect();
    let value_bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| bytes_of(v).iter().copied())
        .collect();
    map.update_batch(
        &key_bytes,
        &value_bytes,
        count,
        MapFlags::ANY,
        MapFlags::ANY,
    )
    .map_err(|e| map_write_error(name, map, e))
}

/// Slot number of the `i`-th backend (slots start at 1).
fn slot_number(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
}

/// Every (key, value) of a hash map; entries deleted while iterating are
/// skipped.
fn entries<K: encode::MapEntry, V: encode::MapEntry>(
    map: &MapHandle,
    name: &'static str,
) -> Result<Vec<(K, V)>, Error> {
    let mut out = Vec::new();
    for key in map.keys() {
        let value = map
            .lookup(&key, MapFlags::ANY)
            .map_err(|e| Error::bpf(format!("look up {name}"), e))?;
        if let Some(value) = value {
            out.push((from_bytes(name, &key)?, from_bytes(name, &value)?));
        }
    }
    Ok(out)
}

fn delete_key(map: &MapHandle, name: &'static str, key: &[u8]) -> Result<(), Error> {
    match map.delete(key) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::bpf(format!("delete from {name}"), e))
        }
        _ => Ok(()),
    }
}

fn map_write_error(name: &'static str, map: &MapHandle, e: libbpf_rs::Error) -> Error {
    if e.kind() == ErrorKind::TooBig {
        Error::MapFull {
            map: name,
            max_entries: map.max_entries(),
        }
    } else {
        Error::bpf(format!("update {name}"), e)
    }
}
