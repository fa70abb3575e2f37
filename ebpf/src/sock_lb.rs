//! Loading and attaching the socket-level load balancer
//! (`bpf/sock_lb.bpf.c`).
//!
//! Maps and the cgroup link are pinned under one directory per node, so the
//! datapath outlives the process that loaded it and a new loader adopts it:
//! the maps are reused as they are, and the pinned link gets the new program
//! atomically, so connections never pass through an unattached window.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::skel::SockLbSkelBuilder;
use crate::{bpffs, Error, LbMaps, MapSizes};

/// File name of the reverse-translation map under a pin directory.
pub(crate) const REVERSE_MAP: &str = "lb4_reverse_sk";

/// The socket hooks, each with the file name of its pinned link.
const HOOKS: [(Hook, &str); 4] = [
    (Hook::Connect4, "link_connect4"),
    (Hook::Sendmsg4, "link_sendmsg4"),
    (Hook::Recvmsg4, "link_recvmsg4"),
    (Hook::Getpeername4, "link_getpeername4"),
];

/// A cgroup socket-address hook of the load balancer.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// `connect()`: TCP and connected UDP go to a backend.
    Connect4,
    /// `sendmsg()` with an address: unconnected UDP.
    Sendmsg4,
    /// `recvmsg()`: replies show the frontend as their source.
    Recvmsg4,
    /// `getpeername()`: the peer is the frontend.
    Getpeername4,
}

/// Where and how large the socket load balancer's objects are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockLbConfig {
    /// bpffs directory for this node's pins, e.g. `/sys/fs/bpf/berth`.
    pub pin_dir: PathBuf,
    /// Map sizes, used when the maps are first created.
    pub map_sizes: MapSizes,
}

/// The socket load balancer, attached to a cgroup2 directory.
#[derive(Debug)]
pub struct SockLb {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    /// Keep the attachments open while this value lives; the pins keep
    /// them after.
    _links: Vec<Link>,
}

impl SockLb {
    /// Loads the programs, creates or reuses the maps pinned under
    /// `config.pin_dir`, and attaches the socket hooks (`connect4`,
    /// `sendmsg4`, `recvmsg4`, `getpeername4`) to the cgroup2 directory
    /// `cgroup` (every process below it is translated). Links already
    /// pinned there get the new programs in place.
    pub fn attach(config: &SockLbConfig, cgroup: &Path) -> Result<Self, Error> {
        bpffs::create_pin_dir(&config.pin_dir)?;
        let cgroup_dir =
            File::open(cgroup).map_err(|e| Error::io("open cgroup directory", cgroup, e))?;

        let mut object = MaybeUninit::<OpenObject>::uninit();
        let mut open = SockLbSkelBuilder::default()
            .open(&mut object)
            .map_err(|e| Error::bpf("open sock_lb object", e))?;
        let resized = bpffs::pin_lb4_maps!(open.maps, config)?;
        let skel = open.load().map_err(|e| {
            Error::bpf(
                format!("load sock_lb (maps pinned in {})", config.pin_dir.display()),
                e,
            )
        })?;
        bpffs::copy_resized(resized)?;

        let mut links = Vec::new();
        for (hook, pin_name) in HOOKS {
            let prog = match hook {
                Hook::Connect4 => &skel.progs.berth_connect4,
                Hook::Sendmsg4 => &skel.progs.berth_sendmsg4,
                Hook::Recvmsg4 => &skel.progs.berth_recvmsg4,
                Hook::Getpeername4 => &skel.progs.berth_getpeername4,
            };
            let link_pin = config.pin_dir.join(pin_name);
            let link = if link_pin.exists() {
                let mut link = Link::open(&link_pin).map_err(|e| {
                    Error::bpf(format!("open pinned link {}", link_pin.display()), e)
                })?;
                link.update_prog(prog).map_err(|e| {
                    Error::bpf(format!("replace program of pinned link {pin_name}"), e)
                })?;
                tracing::info!(pin = %link_pin.display(), "adopted pinned link");
                link
            } else {
                let mut link = prog.attach_cgroup(cgroup_dir.as_raw_fd()).map_err(|e| {
                    Error::bpf(format!("attach {hook:?} to {}", cgroup.display()), e)
                })?;
                link.pin(&link_pin)
                    .map_err(|e| Error::bpf(format!("pin link at {}", link_pin.display()), e))?;
                tracing::info!(cgroup = %cgroup.display(), pin = %link_pin.display(), "attached");
                link
            };
            links.push(link);
        }

        Ok(SockLb {
            pin_dir: config.pin_dir.clone(),
            cgroup: cgroup.to_path_buf(),
            _links: links,
        })
    }

    /// Detaches the programs pinned under `pin_dir`, if any, and removes
    /// the links' pins. The maps stay. Returns whether a link was found.
    pub fn detach(pin_dir: &Path) -> Result<bool, Error> {
        let mut found = false;
        for (_, pin_name) in HOOKS {
            let link_pin = pin_dir.join(pin_name);
            if !link_pin.exists() {
                continue;
            }
            found = true;
            let link = Link::open(&link_pin)
                .map_err(|e| Error::bpf(format!("open pinned link {}", link_pin.display()), e))?;
            link.detach()
                .map_err(|e| Error::bpf(format!("detach {}", link_pin.display()), e))?;
            std::fs::remove_file(&link_pin).map_err(|e| Error::io("unpin link", &link_pin, e))?;
        }
        Ok(found)
    }

    /// The pinned maps, to program services.
    pub fn maps(&self) -> Result<LbMaps, Error> {
        LbMaps::open_pinned(&self.pin_dir)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The cgroup2 directory the program is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}
