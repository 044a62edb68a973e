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
//!
//! The command line is read by `runtime_config::runtime_args`, as runc
//! reads it; a `create` or `run` that cannot be read for certain is refused
//! rather than guessed at.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, Result};
use runtime_config::bundle::{self, mentions_nsbypass};
use runtime_config::install::{self, HookCommand};
use runtime_config::runtime_args::{CommandLine, Created};
use runtime_config::{Bundle, Config, Request};

use crate::{install as installer, logging, profile};

/// Edits the bundle if the command creates a container that asks for
/// something, then becomes `runtime` with the same arguments. Returns only
/// on failure, after writing the failure where the engine looks for it.
pub fn run(config: &Path, runtime: &Path, args: &[OsString]) -> Result<()> {
    let line = CommandLine::parse(args);
    let edited = match line.created {
        Err(message) => Err(anyhow::anyhow!("command line: {message}")),
        Ok(None) => Ok(()),
        Ok(Some(Created { bundle, id })) => {
            edit(config, &bundle).with_context(|| format!("container {id}"))
        }
    };
    if let Err(e) = edited {
        report_to_engine(line.log.as_deref(), &e);
        return Err(e);
    }
    let error = std::process::Command::new(runtime).args(args).exec();
    Err(error).with_context(|| format!("exec {}", runtime.display()))
}

/// containerd hands the runtime the container's own stdio on create and
/// reads the error it shows the user from the `--log` file (runc's JSON
/// log format): the failure goes there too.
fn report_to_engine(log: Option<&OsStr>, error: &anyhow::Error) {
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
        tracing::warn!(log = %Path::new(log).display(), error = %e, "cannot write the runtime log");
    }
}

/// Edits `<bundle>/config.json` in place when it asks nsbypass for something.
fn edit(config_path: &Path, bundle: &Path) -> Result<()> {
    let bundle = std::path::absolute(bundle)?;
    let bytes = bundle::read_spec_bytes(&bundle)?;
    if !mentions_nsbypass(&bytes) {
        return Ok(());
    }
    let parsed = Bundle::parse(&bundle, &bytes)?;
    // The environment counts here, whatever `[requests] from_env` says:
    // it is how docker users ask (see env_requests_to_annotations).
    let request = Request::from_bundle(&parsed, true)?;
    if request.is_empty() {
        return Ok(());
    }
    let config = Config::load(config_path)?;
    // Runtime mode's stderr is the container's: log only to a file.
    if config.log.file.is_some() {
        logging::init(&config.log).map_err(anyhow::Error::msg)?;
    }
    // The profiles go into the spec here, so their policy is checked here;
    // the hooks check the networks' again.
    crate::policy::check(&request, &config).map_err(|f| anyhow::anyhow!("{f}"))?;
    // Every requested profile goes into the spec, whatever the spec's own
    // marker claims: the marker is then set to exactly what was carried.
    let mut carry = match request.profiles.is_empty() {
        true => Default::default(),
        false => profile::plan(&request.profiles, &config)
            .map_err(|f| anyhow::anyhow!("{f}"))?
            .carry(),
    };
    let left_to_hook = leave_missing_targets(&mut carry, &parsed)?;
    let cmd = HookCommand {
        binary: std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("finding this executable")?,
        config: std::path::absolute(config_path)?,
    };
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes).context("config.json")?;
    // The hooks are for networks, and for mounts left to them.
    let hooks = (!request.networks.is_empty() || left_to_hook).then_some(&cmd);
    install::env_requests_to_annotations(&mut spec, &parsed)?;
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

/// runc makes a missing mount target in the rootfs itself, as an empty
/// file or directory that stays. On an engine's overlayfs rootfs (docker's)
/// that is the container's own layer; on a plain directory (a runc bundle,
/// `podman --rootfs`) or a read-only rootfs it is the image on disk. There,
/// the mounts whose targets the image lacks are taken out of `carry` and
/// left to the hook, which makes them on an overlay that dies with the
/// container. Whether any was.
fn leave_missing_targets(carry: &mut install::Carry, bundle: &Bundle) -> Result<bool> {
    let Some(root) = &bundle.root else {
        return Ok(false);
    };
    if carry.mounts.is_empty() && carry.links.is_empty() {
        return Ok(false);
    }
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let own_layer = !bundle.readonly
        && nix::sys::statfs::statfs(root)
            .is_ok_and(|fs| fs.filesystem_type().0 == OVERLAYFS_SUPER_MAGIC);
    if own_layer {
        return Ok(false);
    }
    let rootfs =
        nsutil::rootfs::Rootfs::open(root).with_context(|| format!("rootfs {}", root.display()))?;
    let present = |target: &Path| -> Result<bool> {
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Ok(true);
        };
        // The last component as it is (a link is there too), never followed.
        let dir = rootfs.canonical(parent)?;
        if !dir.exists() {
            return Ok(false);
        }
        let at = rootfs.open_plain(&dir.existing)?;
        Ok(nix::sys::stat::fstatat(&at, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok())
    };
    let before = carry.mounts.len() + carry.links.len();
    let mut failed = None;
    let mut keep = |target: &Path| match present(target) {
        Ok(p) => p,
        Err(e) => {
            failed.get_or_insert(e);
            false
        }
    };
    carry.mounts.retain(|m| keep(&m.target));
    carry.links.retain(|l| keep(&l.target));
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(carry.mounts.len() + carry.links.len() < before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn a_refused_command_line_is_one_line_in_the_log() {
        let dir = std::env::temp_dir().join(format!("nsbypass-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.json");
        let line = format!("-log={} create -b=/nonexistent --bogus id", log.display());
        let err = run(
            Path::new("/nonexistent.toml"),
            Path::new("/bin/false"),
            &args(&line),
        )
        .unwrap_err();
        assert_eq!(
            crate::chain_line(&err),
            "command line: create: unknown flag \"--bogus\": nsbypass cannot tell whether it takes a value"
        );
        let written = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let v: serde_json::Value = serde_json::from_str(written.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(
            v["msg"],
            "nsbypass: runtime: command line: create: unknown flag \"--bogus\": nsbypass cannot tell whether it takes a value"
        );
        assert_eq!(written.lines().count(), 1);
    }
}
