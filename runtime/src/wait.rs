//! Waiting for a container process in the foreground (`run`, `exec`
//! without `--detach`), forwarding the signals the runtime receives, as
//! runc does.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Signals passed on to the container process instead of acting on the
/// runtime.
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPIPE,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGWINCH,
    Signal::SIGURG,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// Waits for `pid` (a child of this process) to exit and returns its exit
/// code, 128 + the signal's number if a signal ended it. Signals the
/// runtime receives meanwhile go to `pid`.
pub fn wait_forwarding(pid: i32) -> Result<i32> {
    let pid = Pid::from_raw(pid);
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        set.add(*signal);
    }
    set.thread_block().map_err(Error::sys("sigprocmask"))?;
    let code = loop {
        // A child that exited before the mask was set sent its SIGCHLD to
        // the default (ignoring) disposition: look before waiting.
        if let Some(code) = exit_code(pid)? {
            break code;
        }
        let signal = set.wait().map_err(Error::sys("sigwait"))?;
        if signal != Signal::SIGCHLD {
            match kill(pid, signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(Error::Sys {
                        call: "kill",
                        source: e,
                    })
                }
            }
        }
    };
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)
        .map_err(Error::sys("sigprocmask"))?;
    Ok(code)
}

/// The exit code of `pid` if it has ended, without blocking.
fn exit_code(pid: Pid) -> Result<Option<i32>> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(code)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(128 + signal as i32)),
        Ok(_) => Ok(None),
        Err(e) => Err(Error::Sys {
            call: "waitpid",
            source: e,
        }),
    }
}
