//! `nsbypass`: an OCI runtime hook that wires containers into MACVLAN
//! networks on a kernel-bypass NIC. See ARCHITECTURE.md for the path from
//! stdin to netlink.

mod derive;
mod failure;
mod hook;
mod kernel;
mod lease;
mod logging;
mod profile;
mod records;
mod setup;
mod teardown;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runtime_config::config::DEFAULT_CONFIG_PATH;

/// Environment variable naming the config file when `--config` is not given.
const CONFIG_ENV: &str = "NSBYPASS_CONFIG";

#[derive(Parser)]
#[command(
    name = "nsbypass",
    version,
    about = "Wire containers into MACVLAN networks on a kernel-bypass NIC"
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli
        .config
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    match cli.command {
        Command::Hook { stage } => match hook::run(stage, &config, std::io::stdin().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if logging::to_file() {
                    tracing::error!(stage = stage.name(), "{e}");
                }
                eprintln!("nsbypass: hook {}: {e}", stage.name());
                ExitCode::FAILURE
            }
        },
    }
}
