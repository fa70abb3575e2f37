//! IPAM: one lease file per address under `<dataDir>/<network>/`, taken and
//! released under an exclusive lock on that directory's `lock` file, so
//! concurrent calls never hand out one address twice and a restart keeps
//! every lease.
//!
//! A lease file is named after its address and holds the container id and
//! interface name, one per line (the layout of the reference `host-local`
//! plugin, which operators already know how to read).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};

use crate::config::{first_host, Attachment};
use crate::error::{CniError, Code, Result};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.0";

/// The lease directory of one network, locked for as long as this lives.
#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        Code::Io,
        format!("cannot {what}"),
        format!("{}: {e}", path.display()),
    )
}

impl Leases {
    /// Opens (creating it if needed) and locks `<data_dir>/<network>`.
    /// Blocks while another call holds the lock.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_error("create the lease directory", &dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open the lease lock", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_error("lock the lease directory", &path, e))?;
        Ok(Leases { dir, _lock: lock })
    }

    /// Every lease: address and owner.
    pub fn all(&self) -> Result<Vec<(Ipv4Addr, Attachment)>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io_error("read the lease directory", &self.dir, e))?;
        let mut leases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("read the lease directory", &self.dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let text = fs::read_to_string(&path).map_err(|e| io_error("read a lease", &path, e))?;
            let mut lines = text.lines().map(str::trim);
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            leases.push((
                ip,
                Attachment {
                    container_id,
                    ifname,
                },
            ));
        }
        leases.sort_by_key(|(ip, _)| *ip);
        Ok(leases)
    }

    /// The address leased to `owner`, if any.
    pub fn find(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .all()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    /// Leases an address of `subnet` to `owner`: the one it already holds
    /// (a repeated ADD), or the next free one after the last handed out.
    /// The network address, the gateway (first address) and the broadcast
    /// address are never leased.
    pub fn allocate(&self, subnet: Ipv4Network, owner: &Attachment) -> Result<Ipv4Addr> {
        let leases = self.all()?;
        if let Some((ip, _)) = leases
            .iter()
            .find(|(ip, o)| o == owner && subnet.contains(*ip))
        {
            return Ok(*ip);
        }
        let taken: HashSet<Ipv4Addr> = leases.iter().map(|(ip, _)| *ip).collect();
        let first = u32::from(first_host(subnet)) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let size = last.saturating_sub(first) + 1;
        let after = self
            .last_reserved()
            .filter(|ip| subnet.contains(*ip))
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .unwrap_or(last);
        let candidates = (1..=size).map(|step| first + (after - first + step) % size);
        let ip = candidates
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| {
                CniError::new(
                    Code::TryAgainLater,
                    "no free address",
                    format!("all {size} addresses of {subnet} are leased"),
                )
            })?;
        self.write(
            &ip.to_string(),
            &format!("{}\n{}\n", owner.container_id, owner.ifname),
            true,
        )?;
        // Only a hint for the next search: not worth an fsync.
        self.write(LAST_RESERVED, &ip.to_string(), false)?;
        Ok(ip)
    }

    /// Releases whatever `owner` holds; returns the addresses released.
    pub fn release(&self, owner: &Attachment) -> Result<Vec<Ipv4Addr>> {
        self.release_where(|o| o == owner)
    }

    /// Releases every lease whose owner is not in `valid` (GC).
    pub fn retain(&self, valid: &HashSet<Attachment>) -> Result<Vec<Ipv4Addr>> {
        self.release_where(|o| !valid.contains(o))
    }

    /// How many addresses of `subnet` are still free.
    pub fn free(&self, subnet: Ipv4Network) -> Result<u32> {
        let first = u32::from(first_host(subnet)) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let used = self
            .all()?
            .iter()
            .filter(|(ip, _)| (first..=last).contains(&u32::from(*ip)))
            .count();
        Ok((last + 1 - first).saturating_sub(used as u32))
    }

    fn release_where(&self, matches: impl Fn(&Attachment) -> bool) -> Result<Vec<Ipv4Addr>> {
        let mut released = Vec::new();
        for (ip, owner) in self.all()? {
            if matches(&owner) {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => released.push(ip),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("remove a lease", &path, e)),
                }
            }
        }
        Ok(released)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Writes `name` atomically (temporary file, fsync when `durable`,
    /// rename), so a crash leaves either the old lease state or the new one.
    fn write(&self, name: &str, contents: &str, durable: bool) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| io_error("write a lease", &tmp, e))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
            .map_err(|e| io_error("write a lease", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_error("write a lease", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("berth-cni-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn allocates_skipping_gateway_reuses_and_releases() {
        let dir = temp_dir("basic");
        let subnet: Ipv4Network = "10.244.1.0/29".parse().unwrap();
        let leases = Leases::lock(&dir, "net").unwrap();
        let a = leases.allocate(subnet, &owner("a")).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(
            leases.allocate(subnet, &owner("a")).unwrap(),
            a,
            "repeated ADD keeps the address"
        );
        let b = leases.allocate(subnet, &owner("b")).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(leases.free(subnet).unwrap(), 3);
        assert_eq!(leases.release(&owner("a")).unwrap(), vec![a]);
        assert!(
            leases.release(&owner("a")).unwrap().is_empty(),
            "releasing twice is fine"
        );
        // The next allocation continues after the last one handed out.
        assert_eq!(
            leases.allocate(subnet, &owner("c")).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4)
        );
        drop(leases);
        let reopened = Leases::lock(&dir, "net").unwrap();
        assert_eq!(
            reopened.find(&owner("b")).unwrap(),
            Some(b),
            "leases survive a restart"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exhaustion_is_try_again_later_and_retain_frees() {
        let dir = temp_dir("full");
        let subnet: Ipv4Network = "10.0.0.0/30".parse().unwrap();
        let leases = Leases::lock(&dir, "net").unwrap();
        assert_eq!(
            leases.allocate(subnet, &owner("a")).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert_eq!(
            leases.allocate(subnet, &owner("b")).unwrap_err().code,
            Code::TryAgainLater
        );
        let released = leases.retain(&HashSet::from([owner("b")])).unwrap();
        assert_eq!(released, vec![Ipv4Addr::new(10, 0, 0, 2)]);
        assert!(leases.allocate(subnet, &owner("b")).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = temp_dir("concurrent");
        let subnet: Ipv4Network = "10.244.9.0/24".parse().unwrap();
        let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    let dir = &dir;
                    s.spawn(move || {
                        Leases::lock(dir, "net")
                            .unwrap()
                            .allocate(subnet, &owner(&format!("c{i}")))
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 50);
        fs::remove_dir_all(&dir).unwrap();
    }
}
