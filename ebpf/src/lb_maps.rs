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
    lb4_affinity, lb4_affinity_key, lb4_backend, lb4_key, lb4_maglev, lb4_service, lb4_slot,
};
use crate::slot_ranges::SlotRanges;
use crate::Error;

/// File name of the services map under a pin directory.
pub(crate) const SERVICES_MAP: &str = "lb4_services";
/// File name of the backend slots map under a pin directory.
pub(crate) const SLOTS_MAP: &str = "lb4_slots";
/// File name of the backends map under a pin directory.
pub(crate) const BACKENDS_MAP: &str = "lb4_backends";
/// File name of the session-affinity map under a pin directory.
pub(crate) const AFFINITY_MAP: &str = "lb4_affinity";
/// File name of the Maglev tables map under a pin directory.
pub(crate) const MAGLEV_MAP: &str = "lb4_maglev";

/// Most backends one frontend can have (slot counts are 16-bit).
const MAX_BACKENDS: usize = u16::MAX as usize;

/// Sizes of the load-balancing maps, set when they are first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of `lb4_services`: one per frontend.
    pub services: u32,
    /// Entries of `lb4_slots`: one per backend of each frontend.
    pub slots: u32,
    /// Entries of `lb4_backends`: one per distinct backend, plus id 0
    /// (never used).
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
            slots: 262144,
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

/// What the maps hold for one frontend: its master entry and the backend
/// id in each of its slots (slot 1 first).
#[derive(Debug, Clone)]
struct Held {
    master: lb4_service,
    ids: Vec<u32>,
}

/// Writes planned for the kernel, applied in this order: new backends,
/// slots, master entries, Maglev tables, removed master entries, then
/// backends no slot points at; slot ranges given up are free for the next
/// plan only.
#[derive(Debug, Default)]
struct Writes {
    backend_keys: Vec<u32>,
    backend_values: Vec<lb4_backend>,
    slot_keys: Vec<u32>,
    slot_values: Vec<lb4_slot>,
    master_keys: Vec<lb4_key>,
    master_values: Vec<lb4_service>,
    deletes: Vec<lb4_key>,
    released: Vec<u32>,
    freed: Vec<(u32, u32)>,
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
    /// Where the slot is in `lb4_slots` (its key there).
    pub index: u32,
    /// Key into `lb4_backends`.
    pub backend_id: u32,
    /// The backend, or `None` if the id has no entry (an inconsistency the
    /// datapath answers by refusing the connection).
    pub backend: Option<Backend>,
}

/// The load-balancing maps of one node, opened from their pins.
///
/// Backend ids are shared between frontends: a backend used by several
/// services has one entry, released when the last service drops it. Each
/// frontend owns a range of `lb4_slots`. The index is rebuilt from the maps
/// when they are opened, so ids and slots survive a restart of whoever
/// programs them.
#[derive(Debug)]
pub struct LbMaps {
    services: MapHandle,
    slots: MapHandle,
    backends: MapHandle,
    affinity: MapHandle,
    maglev: MapHandle,
    /// Backend -> its id in `lb4_backends`.
    backend_ids: HashMap<Backend, u32>,
    /// Backend id -> its backend (the reverse of `backend_ids`).
    id_backends: HashMap<u32, Backend>,
    /// Backend id -> number of slots pointing at it.
    refs: HashMap<u32, u32>,
    /// What the maps hold per frontend (a mirror, so writes need no
    /// lookups).
    held: HashMap<Frontend, Held>,
    /// Ranges of `lb4_slots` no frontend owns.
    ranges: SlotRanges,
    /// Where the search for a free backend id starts.
    next_id: u32,
}

impl LbMaps {
    /// Opens the maps pinned under `pin_dir` (as [`crate::SockLb`] pins
    /// them) and indexes the backends and slots they hold.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, Error> {
        let open = |name: &str| {
            let path = pin_dir.join(name);
            MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))
        };
        let slots = open(SLOTS_MAP)?;
        let mut maps = LbMaps {
            services: open(SERVICES_MAP)?,
            ranges: SlotRanges::new(slots.max_entries()),
            slots,
            backends: open(BACKENDS_MAP)?,
            affinity: open(AFFINITY_MAP)?,
            maglev: open(MAGLEV_MAP)?,
            backend_ids: HashMap::new(),
            id_backends: HashMap::new(),
            refs: HashMap::new(),
            held: HashMap::new(),
            next_id: 1,
        };
        maps.reindex()?;
        Ok(maps)
    }

    /// Rebuilds the backend index, reference counts, slot ranges and the
    /// mirror of the services map from the maps.
    fn reindex(&mut self) -> Result<(), Error> {
        self.backend_ids.clear();
        self.id_backends.clear();
        self.refs.clear();
        self.held.clear();
        self.ranges = SlotRanges::new(self.slots.max_entries());
        for (id, entry) in array_values::<lb4_backend>(&self.backends, BACKENDS_MAP)?
            .iter()
            .enumerate()
        {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if let (true, Some(backend)) = (id != 0, encode::entry_backend(entry)) {
                self.backend_ids.insert(backend, id);
                self.id_backends.insert(id, backend);
                self.refs.insert(id, 0);
            }
        }
        let slots = array_values::<lb4_slot>(&self.slots, SLOTS_MAP)?;
        for (key, mut master) in entries::<lb4_key, lb4_service>(&self.services, SERVICES_MAP)? {
            let Some(frontend) = encode::key_frontend(&key) else {
                continue;
            };
            let base = master.slot_base as usize;
            let owned = master.count <= master.capacity
                && self
                    .ranges
                    .reserve(master.slot_base, u32::from(master.capacity));
            let ids: Vec<u32> = if owned {
                slots[base..base + usize::from(master.count)]
                    .iter()
                    .map(|s| s.backend_id)
                    .collect()
            } else {
                // Not from a writer of this layout: the next write of this
                // frontend gives it a range of its own.
                tracing::warn!(%frontend, "slot range overlaps another or lies outside lb4_slots");
                master.capacity = 0;
                master.count = 0;
                Vec::new()
            };
            for id in &ids {
                *self.refs.entry(*id).or_insert(0) += 1;
            }
            self.held.insert(frontend, Held { master, ids });
        }
        self.next_id = self
            .refs
            .keys()
            .max()
            .map_or(1, |max| max.wrapping_add(1))
            .clamp(1, self.backends.max_entries().saturating_sub(1).max(1));
        Ok(())
    }

    /// Sets `frontend`'s backends to `backends` (duplicates ignored), writing
    /// only the entries that change. An empty list keeps the frontend with
    /// no backend, which refuses connections. A change that does not fit
    /// the maps is refused whole ([`Error::MapFull`]) before any write.
    ///
    /// Order keeps the datapath consistent at every step: backends first,
    /// then slots, then the master entry.
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
    /// programmed in a few tens of milliseconds). Returns each frontend's
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
                .map(|h| h.ids.iter().copied().collect())
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
        let old = self.held.get(frontend);
        if old.is_none() && self.held.len() >= self.services.max_entries() as usize {
            return Err(Error::MapFull {
                map: SERVICES_MAP,
                max_entries: self.services.max_entries(),
            });
        }
        let new_backends = wanted
            .iter()
            .filter(|b| !self.backend_ids.contains_key(b))
            .count();
        if self.refs.len() + new_backends > self.backend_capacity() as usize {
            return Err(Error::MapFull {
                map: BACKENDS_MAP,
                max_entries: self.backends.max_entries(),
            });
        }
        // Grow into a new range when the old one is too small; shrink in
        // place.
        let count = u16::try_from(wanted.len()).unwrap_or(u16::MAX);
        let (old_master, old_ids) = match old {
            Some(h) => (Some(h.master), h.ids.clone()),
            None => (None, Vec::new()),
        };
        let (base, capacity, moved) = match old_master {
            Some(m) if count <= m.capacity => (m.slot_base, m.capacity, false),
            _ => {
                let Some(base) = self.ranges.allocate(u32::from(count)) else {
                    return Err(Error::MapFull {
                        map: SLOTS_MAP,
                        max_entries: self.slots.max_entries(),
                    });
                };
                (base, count, true)
            }
        };

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
        for (i, id) in (0u32..).zip(&new_ids) {
            if moved || old_ids.get(i as usize) != Some(id) {
                writes.slot_keys.push(base + i);
                writes.slot_values.push(encode::slot_entry(*id));
            }
        }
        let flags = old_master.map_or(0, |m| m.flags);
        let master = lb4_service {
            slot_base: base,
            affinity_timeout: old_master.map_or(0, |m| m.affinity_timeout),
            count,
            capacity,
            flags,
            pad: 0,
        };
        if old_master.is_none_or(|m| (m.slot_base, m.count, m.capacity) != (base, count, capacity))
        {
            writes.master_keys.push(encode::service_key(frontend));
            writes.master_values.push(master);
        }
        if let (true, Some(m)) = (moved, old_master) {
            writes.freed.push((m.slot_base, u32::from(m.capacity)));
        }
        self.drop_refs(&old_ids, &mut writes.released);
        // Clients pinned to a backend this frontend no longer has start
        // over (only a frontend with affinity can have pinned clients).
        if flags & encode::FLAG_AFFINITY != 0 {
            writes.affinity_checks.push(*frontend);
        }
        if flags & encode::FLAG_MAGLEV != 0 {
            let table = self.maglev_entry(&new_ids);
            writes.maglev.push((encode::service_key(frontend), table));
        }
        self.held.insert(
            *frontend,
            Held {
                master,
                ids: new_ids,
            },
        );
        Ok(())
    }

    /// Makes `writes` in the kernel, in the consistent order, clears
    /// backends no slot points at any more, and frees the slot ranges
    /// given up.
    fn apply(&mut self, writes: &Writes) -> Result<(), Error> {
        update_batch(
            &self.backends,
            BACKENDS_MAP,
            &writes.backend_keys,
            &writes.backend_values,
        )?;
        update_batch(
            &self.slots,
            SLOTS_MAP,
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
            delete_key(&self.services, SERVICES_MAP, bytes_of(key))?;
        }
        let mut unused = Vec::new();
        for id in &writes.released {
            if self.refs.get(id) == Some(&0) {
                self.refs.remove(id);
                if let Some(backend) = self.id_backends.remove(id) {
                    self.backend_ids.remove(&backend);
                }
                unused.push(*id);
            }
        }
        let empty = vec![lb4_backend::default(); unused.len()];
        update_batch(&self.backends, BACKENDS_MAP, &unused, &empty)?;
        for (base, capacity) in &writes.freed {
            self.ranges.release(*base, *capacity);
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
        let Some(master) = self.held.get(frontend).map(|h| h.master) else {
            return Err(Error::NoSuchFrontend(frontend.to_string()));
        };
        let flags = match timeout {
            Some(_) => master.flags | encode::FLAG_AFFINITY,
            None => master.flags & !encode::FLAG_AFFINITY,
        };
        let seconds = timeout.unwrap_or(0);
        if flags == master.flags && seconds == master.affinity_timeout {
            return Ok(false);
        }
        let entry = lb4_service {
            flags,
            affinity_timeout: seconds,
            ..master
        };
        self.put_master(frontend, entry)?;
        if timeout.is_none() {
            self.forget_affinity(frontend, |_| true)?;
        }
        Ok(true)
    }

    /// Every client's pinned backend: (client netns cookie, frontend,
    /// backend id, nanoseconds of the last use on the kernel's monotonic
    /// clock).
    pub fn affinities(&self) -> Result<Vec<AffinityEntry>, Error> {
        let mut out: Vec<AffinityEntry> =
            entries::<lb4_affinity_key, lb4_affinity>(&self.affinity, AFFINITY_MAP)?
                .into_iter()
                .filter_map(|(key, value)| {
                    Some(AffinityEntry {
                        client: key.client,
                        frontend: encode::affinity_frontend(&key)?,
                        backend_id: value.backend_id,
                        backend: self.id_backends.get(&value.backend_id).copied(),
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
        writes.deletes.push(encode::service_key(frontend));
        writes
            .freed
            .push((held.master.slot_base, u32::from(held.master.capacity)));
        self.drop_refs(&held.ids, &mut writes.released);
        if let Err(e) = self.apply(&writes) {
            self.reindex()?;
            return Err(e);
        }
        if held.master.flags & encode::FLAG_AFFINITY != 0 {
            self.forget_affinity(frontend, |_| true)?;
        }
        if held.master.flags & encode::FLAG_MAGLEV != 0 {
            delete_key(
                &self.maglev,
                MAGLEV_MAP,
                bytes_of(&encode::service_key(frontend)),
            )?;
        }
        Ok(true)
    }

    /// Turns Maglev selection of `frontend` on (writing its table from its
    /// current backends; rewritten whenever they change) or off. The
    /// frontend must exist. Returns whether anything changed.
    pub fn set_maglev(&mut self, frontend: &Frontend, on: bool) -> Result<bool, Error> {
        let Some(held) = self.held.get(frontend) else {
            return Err(Error::NoSuchFrontend(frontend.to_string()));
        };
        let master = held.master;
        let flags = if on {
            master.flags | encode::FLAG_MAGLEV
        } else {
            master.flags & !encode::FLAG_MAGLEV
        };
        if flags == master.flags {
            return Ok(false);
        }
        let key = encode::service_key(frontend);
        if on {
            let table = self.maglev_entry(&held.ids);
            self.maglev
                .update(bytes_of(&key), bytes_of(table.as_ref()), MapFlags::ANY)
                .map_err(|e| Error::bpf(format!("update {MAGLEV_MAP}"), e))?;
        }
        self.put_master(frontend, lb4_service { flags, ..master })?;
        if !on {
            delete_key(&self.maglev, MAGLEV_MAP, bytes_of(&key))?;
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
        let key = encode::service_key(frontend);
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
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let maglev = self
            .held
            .values()
            .filter(|h| h.master.flags & encode::FLAG_MAGLEV != 0)
            .count();
        vec![
            (
                SERVICES_MAP,
                count(self.held.len()),
                self.services.max_entries(),
            ),
            (SLOTS_MAP, self.ranges.used(), self.slots.max_entries()),
            (
                BACKENDS_MAP,
                count(self.refs.len()),
                self.backend_capacity(),
            ),
            (MAGLEV_MAP, count(maglev), self.maglev.max_entries()),
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
            .map(|(frontend, held)| ServiceEntry {
                frontend: *frontend,
                flags: held.master.flags,
                maglev: held.master.flags & encode::FLAG_MAGLEV != 0,
                affinity_timeout: (held.master.flags & encode::FLAG_AFFINITY != 0)
                    .then_some(held.master.affinity_timeout),
                slots: held
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| SlotEntry {
                        slot: slot_number(i),
                        index: held.master.slot_base + u32::try_from(i).unwrap_or(u32::MAX),
                        backend_id: *id,
                        backend: self.id_backends.get(id).copied(),
                    })
                    .collect(),
            })
            .collect();
        entries.sort_by_key(|e| e.frontend);
        Ok(entries)
    }

    /// Backend ids that can be used: every index of `lb4_backends` but 0.
    fn backend_capacity(&self) -> u32 {
        self.backends.max_entries().saturating_sub(1)
    }

    /// Drops one reference for each slot id; the ids go to `released` so
    /// that backends left unused are cleared after the slots.
    fn drop_refs(&mut self, ids: &[u32], released: &mut Vec<u32>) {
        for id in ids {
            if let Some(refs) = self.refs.get_mut(id) {
                *refs = refs.saturating_sub(1);
            }
            released.push(*id);
        }
    }

    /// An unused backend id, searching from after the last one given.
    fn free_id(&mut self) -> Result<u32, Error> {
        let last = self.backend_capacity();
        let start = self.next_id;
        loop {
            let id = self.next_id;
            self.next_id = if id >= last { 1 } else { id + 1 };
            if (1..=last).contains(&id) && !self.refs.contains_key(&id) {
                return Ok(id);
            }
            if self.next_id == start {
                return Err(Error::MapFull {
                    map: BACKENDS_MAP,
                    max_entries: self.backends.max_entries(),
                });
            }
        }
    }

    /// Writes `frontend`'s master entry and mirrors it.
    fn put_master(&mut self, frontend: &Frontend, master: lb4_service) -> Result<(), Error> {
        self.services
            .update(
                bytes_of(&encode::service_key(frontend)),
                bytes_of(&master),
                MapFlags::ANY,
            )
            .map_err(|e| map_write_error(SERVICES_MAP, &self.services, e))?;
        if let Some(held) = self.held.get_mut(frontend) {
            held.master = master;
        }
        Ok(())
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

/// Every value of an array map, by index, read in batches.
fn array_values<V: encode::MapEntry>(map: &MapHandle, name: &'static str) -> Result<Vec<V>, Error> {
    let expected = map.max_entries() as usize;
    let mut values = vec![V::default(); expected];
    let mut read = 0;
    let batches = map
        .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)
        .map_err(|e| Error::bpf(format!("read {name}"), e))?;
    for (key, value) in batches {
        let index: u32 = from_bytes(name, &key)?;
        if let Some(slot) = values.get_mut(index as usize) {
            *slot = from_bytes(name, &value)?;
            read += 1;
        }
    }
    if read != expected {
        return Err(Error::ShortRead {
            map: name,
            read,
            expected,
        });
    }
    Ok(values)
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
