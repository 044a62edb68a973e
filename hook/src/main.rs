//! `nsbypass`: an OCI runtime hook that wires containers into MACVLAN
//! networks on a kernel-bypass NIC and carries the bypass stack in. See
//! ARCHITECTURE.md for the path from stdin to netlink.

mod derive;
mod doctor;
mod failpoint;
mod failure;
mod fast;
mod guard;
mod hook;
mod install;
mod kernel;
mod lease;
mod logging;
mod node;
mod operate;
mod policy;
mod profile;
mod reconcile;
mod records;
mod runtime;
mod setup;
mod shim;
mod teardown;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use runtime_config::config::DEFAULT_CONFIG_PATH;

/// Environment variable naming the config file when `--config` is not given.
const CONFIG_ENV: &str = "NSBYPASS_CONFIG";

#[derive(Parser)]
#[command(
    name = "nsbypass",
    version,
    about = "Wire containers into MACVLAN networks on a kernel-bypass NIC and carry the bypass stack in"
)]
struct Cli {
    /// Config file [default: $NSBYPASS_CONFIG, else /etc/nsbypass/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an OCI hook: reads the container's state JSON on stdin.
    /// prestart/createRuntime set up, poststop tears down, the rest do nothing.
    Hook {
        #[arg(value_enum)]
        stage: hook::Stage,
    },
    /// Check this host against the config: one line per check, `ok` or
    /// `FAIL ...; fix: ...`. Exits 1 if any check fails.
    Doctor,
    /// Register nsbypass with a runtime.
    Install {
        #[arg(value_enum)]
        runtime: Runtime,
        #[command(flatten)]
        places: Places,
        /// The real OCI runtime the docker entry execs [default: runc on PATH]
        #[arg(long, value_name = "PATH")]
        runtime_path: Option<PathBuf>,
        /// The nsbypass binary hooks run [default: this executable]
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Print what would be written instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly what `install` added.
    Uninstall {
        #[arg(value_enum)]
        runtime: Runtime,
        #[command(flatten)]
        places: Places,
        /// Print what would be removed instead of removing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Container Device Interface specs.
    Cdi {
        #[command(subcommand)]
        command: CdiCommand,
    },
    /// Wire a network namespace by hand, as the hook wires a container:
    /// same checks, leases, records and rollback.
    #[command(group(clap::ArgGroup::new("place").required(true).args(["netns", "pid"])))]
    Attach {
        /// The namespace to wire, by path (`ip netns add x` makes /run/netns/x)
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        /// The process whose namespace to wire (e.g. one started with `unshare -n`)
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
        /// The id to record it under; `detach --id` takes it
        #[arg(long, value_name = "ID")]
        id: String,
        /// Networks to join, comma-separated, as in nsbypass.io/network
        #[arg(long, value_name = "NAMES")]
        network: String,
        /// Pinned addresses, NAME=ADDR[,NAME=ADDR], as in nsbypass.io/ip
        #[arg(long, value_name = "NAME=ADDR,...")]
        ip: Option<String>,
        /// Profiles to carry in (needs --pid: a mount namespace and a root)
        #[arg(long, value_name = "NAMES")]
        profile: Option<String>,
    },
    /// Undo `attach` (or a hook's setup) for an id. Detaching twice is fine.
    Detach {
        #[arg(long, value_name = "ID")]
        id: String,
    },
    /// Show every live attachment, from hooks and attach alike.
    List {
        /// An array of objects (id, ids, network, ifname, mac, addresses,
        /// parent, netns, netns_key, source, since, state)
        #[arg(long)]
        json: bool,
    },
    /// Free leases and records no live namespace accounts for (a runtime
    /// that never ran poststop, a killed hook). Safe beside live hooks.
    /// Touches only this node's leases.
    Gc {
        /// Instead, release every lease of node NAME in the etcd store: a
        /// node that is gone for good (the operator says so)
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Docker runtime mode: edit the bundle on create, then exec the real
    /// runtime with the same arguments (given after `--`).
    Runtime {
        /// The real OCI runtime
        #[arg(long, value_name = "PATH", default_value = "runc")]
        runtime: PathBuf,
        #[arg(last = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum CdiCommand {
    /// Write a CDI spec (kind nsbypass.io/profile) with one device per profile.
    Generate {
        #[arg(long, value_name = "PATH", default_value = install::DEFAULT_CDI_SPEC)]
        output: PathBuf,
        /// The nsbypass binary the spec's hooks run [default: this executable]
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Print the spec instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Runtime {
    Podman,
    Crio,
    Docker,
}

/// Where install and uninstall write.
#[derive(Args)]
struct Places {
    /// hooks.d directory (podman, crio)
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_HOOKS_DIR)]
    hooks_dir: PathBuf,
    /// CRI-O drop-in directory (crio)
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_CRIO_DROPIN_DIR)]
    dropin_dir: PathBuf,
    /// Docker daemon config (docker)
    #[arg(long, value_name = "PATH", default_value = install::DEFAULT_DAEMON_JSON)]
    daemon_json: PathBuf,
}

fn main() -> ExitCode {
    let code = run();
    // Last: a guard removed in this run must not make the runtime wait
    // for the kernel to free it (see the function).
    nsutil::nftables::release_in_background();
    code
}

fn run() -> ExitCode {
    // Hook calls first, by hand: most have nothing to do (see fast.rs).
    let args: Vec<OsString> = std::env::args_os().skip(1).take(6).collect();
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    if let Some(hook) = fast::recognise(&refs) {
        return run_hook(hook.stage, &config_path(hook.config));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors are one line too; help and version print as usual.
        Err(e) if e.use_stderr() => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            let first = first.trim_start_matches("error: ");
            say(&format!("{first} (see nsbypass --help)"));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let config = config_path(cli.config);
    let (what, result) = match cli.command {
        Command::Hook { stage } => return run_hook(stage, &config),
        Command::Doctor => {
            return match doctor::run(&config) {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            };
        }
        Command::Install {
            runtime,
            places,
            runtime_path,
            binary,
            dry_run,
        } => (
            format!("install {}", runtime.name()),
            install::Target::new(binary, &config, dry_run).and_then(|target| match runtime {
                Runtime::Podman => install::install_hooks_d(&target, &places.hooks_dir),
                Runtime::Crio => {
                    install::install_crio(&target, &places.hooks_dir, &places.dropin_dir)
                }
                Runtime::Docker => {
                    install::install_docker(&target, &places.daemon_json, runtime_path)
                }
            }),
        ),
        Command::Uninstall {
            runtime,
            places,
            dry_run,
        } => (
            format!("uninstall {}", runtime.name()),
            match runtime {
                Runtime::Podman => install::uninstall_hooks_d(&places.hooks_dir, dry_run),
                Runtime::Crio => {
                    install::uninstall_crio(&places.hooks_dir, &places.dropin_dir, dry_run)
                }
                Runtime::Docker => install::uninstall_docker(&places.daemon_json, dry_run),
            },
        ),
        Command::Cdi {
            command:
                CdiCommand::Generate {
                    output,
                    binary,
                    dry_run,
                },
        } => (
            "cdi generate".to_owned(),
            install::Target::new(binary, &config, dry_run)
                .and_then(|t| install::cdi_generate(&t, &output)),
        ),
        Command::Attach {
            netns,
            pid,
            id,
            network,
            ip,
            profile,
        } => {
            let place = match (pid, netns) {
                (Some(pid), _) => operate::Place::Pid(pid),
                (None, Some(path)) => operate::Place::Netns(path),
                (None, None) => unreachable!("clap requires --netns or --pid"),
            };
            let attach = operate::Attach {
                place,
                id: id.clone(),
                networks: network,
                ip,
                profiles: profile,
            };
            (format!("attach {id}"), operate::attach(&config, &attach))
        }
        Command::Detach { id } => (format!("detach {id}"), operate::detach(&config, &id)),
        Command::List { json } => ("list".to_owned(), operate::list(&config, json)),
        Command::Gc { node: None } => ("gc".to_owned(), operate::gc(&config)),
        Command::Gc { node: Some(node) } => (
            format!("gc --node {node}"),
            operate::gc_node(&config, &node),
        ),
        Command::Runtime { runtime, args } => {
            ("runtime".to_owned(), runtime::run(&config, &runtime, &args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = failure::one_line(&chain_line(&e));
            if logging::to_file() {
                tracing::error!("{what}: {line}");
            }
            say(&format!("{what}: {line}"));
            ExitCode::FAILURE
        }
    }
}

/// `--config`, else `$NSBYPASS_CONFIG`, else the default path.
fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// `nsbypass hook STAGE`, however the argv was read.
fn run_hook(stage: hook::Stage, config: &std::path::Path) -> ExitCode {
    match hook::run(stage, config, std::io::stdin().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logging::to_file() {
                tracing::error!(stage = stage.name(), "{e}");
            }
            say(&format!("hook {}: {e}", stage.name()));
            ExitCode::FAILURE
        }
    }
}

/// Prints the one error line, cut to a bounded length. A runtime may have
/// closed the pipe already: that must not turn a clean failure into a
/// crash (`eprintln!` panics on EPIPE, and the release build aborts).
fn say(line: &str) {
    use std::io::Write;
    let line = failure::bounded(&format!("nsbypass: {line}"), failure::MAX_LINE);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// An error and its causes on one line, each cause once (many errors
/// already include their source's text).
pub(crate) fn chain_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Crio => "crio",
            Runtime::Docker => "docker",
        }
    }
}
