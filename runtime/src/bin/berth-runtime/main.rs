//! `berth-runtime`: an OCI runtime with runc's command line, so that
//! `containerd-shim-runc-v2`, podman/conmon and the Berth agent can call it
//! as they call runc.

mod log;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_runtime::container::{CreateOptions, ExecOptions, Runtime, State};
use berth_runtime::image::pack::{pack, PackOptions};
use berth_runtime::image::ImageStore;
use berth_runtime::spec;
use berth_runtime::wait::wait_forwarding;
use clap::{Parser, Subcommand, ValueEnum};
use libcontainer::oci_spec::runtime::LinuxResources;

#[derive(Debug, Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "Berth's OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// Directory for the containers' state.
    #[arg(long, global = true, default_value = "/run/berth/runtime")]
    root: PathBuf,
    /// Append logs to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: log::Format,
    /// Log debug messages too.
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd (not supported: cgroupfs only).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// The image store's directory.
    #[arg(long, global = true, default_value = "/var/lib/berth/images")]
    images: PathBuf,
    /// Rootless mode (runc's flag): only `false` or `auto` as root.
    #[arg(long, global = true, default_value = "auto")]
    rootless: String,
    /// Cgroup parent of containers whose configuration has no cgroupsPath.
    #[arg(long, global = true, default_value = "berth")]
    cgroup_parent: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the init process's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Send the pseudo-terminal master to this unix socket.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Do not use pivot_root (for a root filesystem on a ramdisk).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility: the container never gets a new
    /// session keyring from this runtime.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass this many extra file descriptors (3 onwards) to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    /// The container's id.
    id: String,
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Listing {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container (its init waits for `start`).
    Create(CreateArgs),
    /// Start a created container's program.
    Start { id: String },
    /// Create and start a container; without --detach, wait for it, pass
    /// on signals, delete it and exit with its exit code.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the container runs.
        #[arg(long, short)]
        detach: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or with --all to all its processes.
    Kill {
        /// Signal every process of the container.
        #[arg(long, short)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (with --force, any).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec {
        /// A process.json (runtime-spec Process) instead of arguments.
        #[arg(long, short)]
        process: Option<PathBuf>,
        /// Return once the process runs.
        #[arg(long, short)]
        detach: bool,
        /// Write the process's pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Give the process a pseudo-terminal.
        #[arg(long, short)]
        tty: bool,
        /// Send the pseudo-terminal master to this unix socket.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Add an environment variable (KEY=value).
        #[arg(long, short)]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Pass this many extra file descriptors to the process.
        #[arg(long, default_value_t = 0)]
        preserve_fds: i32,
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        #[arg(long, short, value_enum, default_value = "table")]
        format: Listing,
        id: String,
    },
    /// List the containers.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        format: Listing,
        /// Print only the ids.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a running container's resource limits.
    Update {
        /// runtime-spec LinuxResources as JSON, from a file or `-` for stdin.
        #[arg(long, short)]
        resources: Option<PathBuf>,
        /// Memory limit in bytes (suffixes k, m, g accepted).
        #[arg(long)]
        memory: Option<String>,
        /// Memory plus swap limit in bytes (-1: unlimited).
        #[arg(long, allow_hyphen_values = true)]
        memory_swap: Option<String>,
        /// CPU shares (relative weight).
        #[arg(long)]
        cpu_shares: Option<u64>,
        /// CPU time allowed per period, in µs (-1: unlimited).
        #[arg(long, allow_hyphen_values = true)]
        cpu_quota: Option<i64>,
        /// CPU period in µs.
        #[arg(long)]
        cpu_period: Option<u64>,
        /// Maximum number of processes (-1: unlimited).
        #[arg(long, allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        id: String,
    },
    /// Print the runtime's features (runtime-spec features.json).
    Features,
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
    },
    /// The image store: import OCI layouts, mount root filesystems.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Import every image of an OCI image layout (all blobs verified first).
    Import { layout: PathBuf },
    /// List the imported images.
    List,
    /// Mount a root filesystem for a container from an image; prints its path.
    Mount { id: String, image: String },
    /// Unmount and remove a container's root filesystem.
    Unmount { id: String },
    /// Write directories as an image (one gzip layer each, bottom first) into an OCI layout.
    Pack {
        /// The image's name in the layout.
        #[arg(long)]
        name: String,
        /// The default command (repeat for each argument).
        #[arg(long = "cmd")]
        cmd: Vec<String>,
        /// Environment of the image (KEY=value).
        #[arg(long = "env")]
        env: Vec<String>,
        /// The layout directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Layer directories, bottom first.
        #[arg(required = true)]
        layers: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = log::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        eprintln!("berth-runtime: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("berth-runtime: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: berth-runtime manages cgroups through cgroupfs (v1 and v2); drop the flag or set SystemdCgroup = false");
    }
    match cli.rootless.as_str() {
        "false" | "auto" => {}
        "true" => bail!("--rootless=true is not supported: run berth-runtime as root"),
        other => bail!("--rootless takes true, false or auto, not {other:?}"),
    }
    if let Command::Features = cli.command {
        println!("{}", serde_json::to_string_pretty(&spec::features())?);
        return Ok(0);
    }
    if let Command::Spec { bundle } = &cli.command {
        write_default_spec(bundle)?;
        return Ok(0);
    }
    if let Command::Image(command) = cli.command {
        return image_command(&cli.images, command).map(|()| 0);
    }
    let runtime = Runtime::new(&cli.root, &cli.cgroup_parent)?;
    match cli.command {
        Command::Create(args) => drop(runtime.create(&args.id, &args.options())?),
        Command::Start { id } => runtime.start(&id)?,
        Command::Run { create, detach } => return run_container(&runtime, &create, detach),
        Command::State { id } => {
            println!("{}", serde_json::to_string_pretty(&runtime.state(&id)?)?)
        }
        Command::Kill { all, id, signal } => runtime.kill(&id, &signal, all)?,
        Command::Delete { force, id } => runtime.delete(&id, force)?,
        Command::Exec {
            process,
            detach,
            pid_file,
            tty,
            console_socket,
            env,
            cwd,
            preserve_fds,
            id,
            args,
        } => {
            let opts = ExecOptions {
                process,
                args,
                env,
                cwd,
                tty,
                detach,
                pid_file,
                console_socket,
                preserve_fds,
            };
            let pid = runtime.exec(&id, &opts)?;
            if !detach {
                return Ok(exit_byte(wait_forwarding(pid)?));
            }
        }
        Command::Ps { format, id } => print_processes(&runtime.pids(&id)?, format)?,
        Command::List { format, quiet } => print_list(&runtime.list()?, format, quiet)?,
        Command::Pause { id } => runtime.pause(&id)?,
        Command::Resume { id } => runtime.resume(&id)?,
        Command::Update {
            resources,
            memory,
            memory_swap,
            cpu_shares,
            cpu_quota,
            cpu_period,
            pids_limit,
            id,
        } => {
            let mut doc = match resources {
                Some(path) => read_resources(&path)?,
                None => serde_json::json!({}),
            };
            let set = |doc: &mut serde_json::Value,
                       section: &str,
                       key: &str,
                       value: serde_json::Value| {
                doc[section][key] = value;
            };
            if let Some(m) = memory {
                set(&mut doc, "memory", "limit", parse_bytes(&m)?.into());
            }
            if let Some(m) = memory_swap {
                set(&mut doc, "memory", "swap", parse_bytes(&m)?.into());
            }
            if let Some(v) = cpu_shares {
                set(&mut doc, "cpu", "shares", v.into());
            }
            if let Some(v) = cpu_quota {
                set(&mut doc, "cpu", "quota", v.into());
            }
            if let Some(v) = cpu_period {
                set(&mut doc, "cpu", "period", v.into());
            }
            if let Some(v) = pids_limit {
                set(&mut doc, "pids", "limit", v.into());
            }
            let resources: LinuxResources = serde_json::from_value(doc)
                .context("the resources are not runtime-spec LinuxResources")?;
            runtime.update(&id, &resources)?;
        }
        Command::Features | Command::Spec { .. } | Command::Image(_) => {
            unreachable!("handled before the runtime root is made")
        }
    }
    Ok(0)
}

fn image_command(dir: &Path, command: ImageCommand) -> anyhow::Result<()> {
    if let ImageCommand::Pack {
        name,
        cmd,
        env,
        out,
        layers,
    } = command
    {
        let layers: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        let digest = pack(&layers, &out, &PackOptions { name, cmd, env })?;
        println!("{digest}");
        return Ok(());
    }
    let store = ImageStore::open(dir)?;
    match command {
        ImageCommand::Import { layout } => {
            for name in store.import(&layout)? {
                println!("{name}");
            }
        }
        ImageCommand::List => {
            for (name, digest) in store.list()? {
                println!("{name}\t{digest}");
            }
        }
        ImageCommand::Mount { id, image } => {
            println!("{}", store.mount_rootfs(&id, &image)?.display())
        }
        ImageCommand::Unmount { id } => store.remove_rootfs(&id)?,
        ImageCommand::Pack { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `run`: create and start; in the foreground wait, then delete.
fn run_container(runtime: &Runtime, args: &CreateArgs, detach: bool) -> anyhow::Result<u8> {
    let pid = runtime.create_with(&args.id, &args.options(), detach)?;
    if let Err(e) = runtime.start(&args.id) {
        if let Err(cleanup) = runtime.delete(&args.id, true) {
            tracing::warn!(id = %args.id, error = %cleanup, "removing the container that did not start");
        }
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(pid)?;
    runtime.delete(&args.id, true)?;
    Ok(exit_byte(code))
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code & 0xff).unwrap_or(1)
}

fn write_default_spec(bundle: &Path) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists; remove it first", path.display());
    }
    let spec = spec::default_spec()?;
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn read_resources(path: &Path) -> anyhow::Result<serde_json::Value> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the resources from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Bytes with an optional k, m or g suffix (powers of 1024); -1 for unlimited.
fn parse_bytes(text: &str) -> anyhow::Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.trim_end_matches('b').char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    let value: i64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size in bytes (such as 67108864 or 64m)"))?;
    if value == -1 {
        return Ok(-1);
    }
    value
        .checked_mul(unit)
        .filter(|v| *v >= 0)
        .with_context(|| format!("{text:?} is out of range"))
}

fn print_processes(pids: &[i32], format: Listing) -> anyhow::Result<()> {
    match format {
        Listing::Json => println!("{}", serde_json::to_string(pids)?),
        Listing::Table => {
            println!("{:>8}  CMD", "PID");
            for pid in pids {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                println!("{pid:>8}  {}", cmd.trim_end());
            }
        }
    }
    Ok(())
}

fn print_list(states: &[State], format: Listing, quiet: bool) -> anyhow::Result<()> {
    if quiet {
        for state in states {
            println!("{}", state.id);
        }
        return Ok(());
    }
    match format {
        Listing::Json => println!("{}", serde_json::to_string(states)?),
        Listing::Table => {
            println!(
                "{:<24} {:>8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in states {
                println!(
                    "{:<24} {:>8} {:<10} {:<40} {:<32} {}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_bytes("67108864").expect("plain"), 67_108_864);
        assert_eq!(parse_bytes("64m").expect("m"), 64 << 20);
        assert_eq!(parse_bytes("1G").expect("g"), 1 << 30);
        assert_eq!(parse_bytes("512kb").expect("kb"), 512 << 10);
        assert_eq!(parse_bytes("-1").expect("unlimited"), -1);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-5m").is_err());
    }
}
