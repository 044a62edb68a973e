//! `nsbypass runtime [--runtime PATH] -- RUNC-ARGS...`: the docker runtime
//! entry. Docker has no hooks directory; the accepted way in is a runtime
//! that edits the bundle's `config.json` on `create` and then execs the
//! real runtime. Every other command passes straight through.
//!
//! On `create` (or `run`) of a bundle that asks nsbypass for something, the
//! edit adds the prestart and poststop hooks (explicit env, never twice) and
//! the requested profiles as spec entries: device nodes with their cgroup
//! rules (the runtime grants them itself, on cgroup v1 and v2), bind
//! mounts, and the environment (`LD_PRELOAD`, the profiles' env).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use runtime_config::bundle::{self, mentions_nsbypass};
use runtime_config::install::{self, HookCommand};
use runtime_config::{Bundle, Config, Request};

use crate::{install as installer, logging, profile};

/// Global options that take a value, of runc and of crun.
const VALUED_GLOBALS: [&str; 7] = [
    "--root",
    "--log",
    "--log-format",
    "--log-level",
    "--criu",
    "--rootless",
    "--cgroup-manager",
];

/// Edits the bundle if the command creates a container that asks for
/// something, then becomes `runtime` with the same arguments. Returns only
/// on failure, after writing the failure where the engine looks for it.
pub fn run(config: &Path, runtime: &Path, args: &[OsString]) -> Result<()> {
    if let Some((bundle, id)) = created_bundle(args) {
        if let Err(e) = edit(config, &bundle).with_context(|| format!("container {id}")) {
            report_to_engine(args, &e);
            return Err(e);
        }
    }
    let error = std::process::Command::new(runtime).args(args).exec();
    Err(error).with_context(|| format!("exec {}", runtime.display()))
}

/// containerd hands the runtime the container's own stdio on create and
/// reads the error it shows the user from the `--log` file (runc's JSON
/// log format): the failure goes there too.
fn report_to_engine(args: &[OsString], error: &anyhow::Error) {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let log = args.iter().enumerate().find_map(|(i, a)| match *a {
        "--log" => args.get(i + 1).copied(),
        a => a.strip_prefix("--log="),
    });
    let Some(log) = log else { return };
    let message = format!(
        "nsbypass: runtime: {}",
        crate::failure::one_line(&crate::chain_line(error))
    );
    let line = serde_json::json!({ "level": "error", "msg": message }).to_string() + "\n";
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(log, error = %e, "cannot write the runtime log");
    }
}

/// The bundle (and container id) of a `create` or `run` command line.
fn created_bundle(args: &[OsString]) -> Option<(PathBuf, String)> {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        let valued = VALUED_GLOBALS.contains(&args[i]) && !args[i].contains('=');
        i += if valued { 2 } else { 1 };
    }
    if !matches!(args.get(i), Some(&"create") | Some(&"run")) {
        return None;
    }
    let rest = &args[i + 1..];
    let mut bundle = PathBuf::from(".");
    let mut j = 0;
    while j < rest.len() {
        match rest[j] {
            "--bundle" | "-b" => {
                bundle = PathBuf::from(rest.get(j + 1)?);
                j += 1;
            }
            a if a.starts_with("--bundle=") => bundle = PathBuf::from(&a["--bundle=".len()..]),
            _ => {}
        }
        j += 1;
    }
    let id = rest.last().filter(|a| !a.starts_with('-'))?.to_string();
    Some((bundle, id))
}

/// Edits `<bundle>/config.json` in place when it asks nsbypass for something.
fn edit(config_path: &Path, bundle: &Path) -> Result<()> {
    let bundle = std::path::absolute(bundle)?;
    let bytes = bundle::read_spec_bytes(&bundle)?;
    if !mentions_nsbypass(&bytes) {
        return Ok(());
    }
    let parsed = Bundle::parse(&bundle, &bytes)?;
    let request = Request::from_bundle(&parsed)?;
    if request.is_empty() {
        return Ok(());
    }
    let config = Config::load(config_path)?;
    // Runtime mode's stderr is the container's: log only to a file.
    if config.log.file.is_some() {
        logging::init(&config.log).map_err(anyhow::Error::msg)?;
    }
    let to_carry = request.profiles_to_carry();
    let carry = match to_carry.is_empty() {
        true => Default::default(),
        false => profile::plan(&to_carry, &config)
            .map_err(|f| anyhow::anyhow!("{f}"))?
            .carry(),
    };
    let cmd = HookCommand {
        binary: std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("finding this executable")?,
        config: std::path::absolute(config_path)?,
    };
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes).context("config.json")?;
    // The hooks are for networks; profiles alone are all in the spec.
    let hooks = (!request.networks.is_empty()).then_some(&cmd);
    install::edit_spec(&mut spec, hooks, &carry)?;
    let path = bundle::spec_path(&bundle);
    installer::write_atomically(&path, &install::pretty(&spec))?;
    tracing::info!(
        bundle = %bundle.display(),
        networks = %request.networks.join(","),
        profiles = %carry.profiles.join(","),
        "runtime: spec edited"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_bundle_of_create_as_docker_calls_it() {
        let line =
            "--root /run/docker/runtime-runc/moby --log /x/log.json --log-format json create \
                    --bundle /x/b --pid-file /x/init.pid c0ffee";
        assert_eq!(
            created_bundle(&args(line)),
            Some((PathBuf::from("/x/b"), "c0ffee".into()))
        );
        assert_eq!(
            created_bundle(&args("--debug --systemd-cgroup create -b /b id1")),
            Some((PathBuf::from("/b"), "id1".into()))
        );
        assert_eq!(
            created_bundle(&args("--root=/r run --bundle=/b2 id2"))
                .unwrap()
                .0,
            PathBuf::from("/b2")
        );
        assert_eq!(
            created_bundle(&args("create id3")).unwrap().0,
            PathBuf::from(".")
        );
        for other in [
            "--root /r start id",
            "--root /r delete --force id",
            "state id",
            "--version",
            "",
        ] {
            assert_eq!(created_bundle(&args(other)), None, "{other}");
        }
    }
}
