//! `berth-cni`: the CNI plugin binary. A runtime runs it with `CNI_*`
//! variables in the environment and the network configuration on stdin; it
//! prints a result or an error object on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use berth_cni::config::NetConf;
use berth_cni::env::Env;
use berth_cni::error::{CniError, Code};
use berth_cni::{plugin, retire};

fn main() -> ExitCode {
    berth_cli::init_logging("BERTH_CNI_LOG", "warn");
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, index, alias] = args.as_slice() {
        if mode == retire::REAP_ARG {
            return match retire::reap(index, alias) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "reaper failed");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(Code::Io, "cannot read the configuration from stdin", e));
    let version = NetConf::version_of(&stdin).unwrap_or_else(|| "1.1.0".to_string());
    let outcome = read
        .and_then(|_| Env::from_process())
        .and_then(|env| plugin::run(&env, &stdin));
    let (printed, code) = match outcome {
        Ok(Some(result)) => (Some(result), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(code = e.code as u32, error = %e, "CNI call failed");
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(json) = printed {
        let mut out = std::io::stdout().lock();
        let written = serde_json::to_writer(&mut out, &json)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out));
        if written.is_err() {
            return ExitCode::FAILURE;
        }
    }
    code
}
