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

use crate::lb_maps::{BACKENDS_MAP, SERVICES_MAP};
use crate::skel::SockLbSkelBuilder;
use crate::{bpffs, Error, LbMaps, MapSizes};

/// File name of the pinned cgroup/connect4 link.
const CONNECT4_LINK: &str = "link_connect4";

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
    /// Keeps the attachment open while this value lives; the pin keeps it
    /// after.
    _link: Link,
}

impl SockLb {
    /// Loads the programs, creates or reuses the maps pinned under
    /// `config.pin_dir`, and attaches `cgroup/connect4` to the cgroup2
    /// directory `cgroup` (every process below it is translated).
    pub fn attach(config: &SockLbConfig, cgroup: &Path) -> Result<Self, Error> {
        bpffs::create_pin_dir(&config.pin_dir)?;
        let cgroup_dir =
            File::open(cgroup).map_err(|e| Error::io("open cgroup directory", cgroup, e))?;

        let mut object = MaybeUninit::<OpenObject>::uninit();
        let mut open = SockLbSkelBuilder::default()
            .open(&mut object)
            .map_err(|e| Error::bpf("open sock_lb object", e))?;
        let maps = &mut open.maps;
        for (map, name, size) in [
            (
                &mut maps.lb4_services,
                SERVICES_MAP,
                config.map_sizes.services,
            ),
            (
                &mut maps.lb4_backends,
                BACKENDS_MAP,
                config.map_sizes.backends,
            ),
        ] {
            map.set_max_entries(size)
                .map_err(|e| Error::bpf(format!("size {name}"), e))?;
            map.set_pin_path(config.pin_dir.join(name))
                .map_err(|e| Error::bpf(format!("set pin path of {name}"), e))?;
        }
        let skel = open.load().map_err(|e| {
            Error::bpf(
                format!(
                    "load sock_lb (maps pinned in {} with another layout or size must be removed first)",
                    config.pin_dir.display()
                ),
                e,
            )
        })?;

        let link_pin = config.pin_dir.join(CONNECT4_LINK);
        let prog = &skel.progs.berth_connect4;
        let link = if link_pin.exists() {
            let mut link = Link::open(&link_pin)
                .map_err(|e| Error::bpf(format!("open pinned link {}", link_pin.display()), e))?;
            link.update_prog(prog)
                .map_err(|e| Error::bpf("replace program of pinned connect4 link", e))?;
            tracing::info!(pin = %link_pin.display(), "adopted pinned connect4 link");
            link
        } else {
            let mut link = prog
                .attach_cgroup(cgroup_dir.as_raw_fd())
                .map_err(|e| Error::bpf(format!("attach connect4 to {}", cgroup.display()), e))?;
            link.pin(&link_pin)
                .map_err(|e| Error::bpf(format!("pin link at {}", link_pin.display()), e))?;
            tracing::info!(cgroup = %cgroup.display(), pin = %link_pin.display(), "attached connect4");
            link
        };

        Ok(SockLb {
            pin_dir: config.pin_dir.clone(),
            cgroup: cgroup.to_path_buf(),
            _link: link,
        })
    }

    /// Detaches the program pinned under `pin_dir`, if any, and removes the
    /// link's pin. The maps stay. Returns whether a link was found.
    pub fn detach(pin_dir: &Path) -> Result<bool, Error> {
        let link_pin = pin_dir.join(CONNECT4_LINK);
        if !link_pin.exists() {
            return Ok(false);
        }
        let link = Link::open(&link_pin)
            .map_err(|e| Error::bpf(format!("open pinned link {}", link_pin.display()), e))?;
        link.detach()
            .map_err(|e| Error::bpf(format!("detach {}", link_pin.display()), e))?;
        std::fs::remove_file(&link_pin).map_err(|e| Error::io("unpin link", &link_pin, e))?;
        Ok(true)
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
