//! `berth-pause`: pid 1 of a pod sandbox. It holds the pod's namespaces
//! open for the pod's containers, reaps every zombie handed to it (when
//! containers share its pid namespace), and exits 0 on SIGTERM or SIGINT.
//!
//! Built static (`-C target-feature=+crt-static`), so the sandbox's root
//! filesystem is this one file. The init of a pid namespace only receives
//! signals it has a handler for, so TERM, INT and CHLD get an empty one;
//! all three stay blocked and are taken with `sigwait`.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

extern "C" fn ignore(_: nix::libc::c_int) {}

fn main() {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(signal);
        let action = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe; the
        // signal stays blocked and is consumed by sigwait below anyway.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            eprintln!("berth-pause: sigaction {signal}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = set.thread_block() {
        eprintln!("berth-pause: sigprocmask: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("berth-pause: sigwait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Waits for every child that has ended.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
