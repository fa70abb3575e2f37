//! Running helper commands (iproute2) with errors that say what failed.

use std::process::Command;

use crate::Error;

/// Runs `cmd` to completion; returns its stdout, or an error with its
/// stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let command = describe(cmd);
    let output = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip ARGS...`, checked.
pub(crate) fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
