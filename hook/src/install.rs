//! `nsbypass install|uninstall podman|crio|docker` and `nsbypass cdi
//! generate`: write what each runtime needs, merged into what is there,
//! idempotently, and take back exactly that.
//!
//! The contents come from `runtime_config::install`; this module only reads
//! and writes files. Every write goes to a temporary file renamed into
//! place, and a file whose content would not change is not touched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runtime_config::install::{self, HookCommand};
use runtime_config::Config;

use crate::profile;

/// Default hooks.d directory for `install podman|crio` (the override
/// directory podman and CRI-O read; `/usr` is read-only on OpenShift).
pub const DEFAULT_HOOKS_DIR: &str = "/etc/containers/oci/hooks.d";
/// Default directory of CRI-O drop-ins.
pub const DEFAULT_CRIO_DROPIN_DIR: &str = "/etc/crio/crio.conf.d";
/// The drop-in `install crio` writes there.
pub const CRIO_DROPIN_FILE: &str = "50-nsbypass.conf";
/// Default docker daemon config.
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// Default output of `cdi generate`.
pub const DEFAULT_CDI_SPEC: &str = "/etc/cdi/nsbypass.yaml";

/// Where generated hooks point, and whether to write or only show.
pub struct Target {
    pub cmd: HookCommand,
    pub dry_run: bool,
}

impl Target {
    /// The hook command for `binary` (default: this executable) and
    /// `config`, both made absolute: runtimes run hooks from elsewhere.
    pub fn new(binary: Option<PathBuf>, config: &Path, dry_run: bool) -> Result<Target> {
        let binary = match binary {
            Some(b) => {
                std::path::absolute(&b).with_context(|| format!("binary {}", b.display()))?
            }
            None => std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .context("finding this executable")?,
        };
        let config =
            std::path::absolute(config).with_context(|| format!("config {}", config.display()))?;
        if let Err(e) = Config::load(&config) {
            eprintln!(
                "nsbypass: note: hooks will read {}, which does not load yet: {e}",
                config.display()
            );
        }
        Ok(Target {
            cmd: HookCommand { binary, config },
            dry_run,
        })
    }

    /// Writes `content` to `path` unless it is there already.
    fn write(&self, path: &Path, content: &str) -> Result<()> {
        if self.dry_run {
            println!("would write {}:\n{content}", path.display());
            return Ok(());
        }
        if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
            println!("unchanged {}", path.display());
            return Ok(());
        }
        write_atomically(path, content)?;
        println!("wrote {}", path.display());
        Ok(())
    }
}

/// `install podman` / the hooks.d half of `install crio`.
pub fn install_hooks_d(target: &Target, dir: &Path) -> Result<()> {
    for (name, content) in install::hooks_d_files(&target.cmd) {
        target.write(&dir.join(name), &content)?;
    }
    Ok(())
}

/// `install crio`: the hooks.d files and the drop-in that puts their
/// directory on CRI-O's `hooks_dir`.
pub fn install_crio(target: &Target, hooks_dir: &Path, dropin_dir: &Path) -> Result<()> {
    install_hooks_d(target, hooks_dir)?;
    let hooks_dir = std::path::absolute(hooks_dir)?;
    target.write(
        &dropin_dir.join(CRIO_DROPIN_FILE),
        &install::crio_dropin(&hooks_dir),
    )?;
    eprintln!("nsbypass: restart crio (systemctl restart crio): it reads hooks_dir only at start");
    Ok(())
}

/// `install docker`: the `nsbypass` runtime merged into `daemon_json`. The
/// first install keeps a copy of the file as it was (`<file>.nsbypass-backup`).
pub fn install_docker(target: &Target, daemon_json: &Path, runtime: Option<PathBuf>) -> Result<()> {
    let runtime = match runtime {
        Some(r) => r,
        None => {
            find_in_path("runc").context("no runc on PATH; name the runtime with --runtime-path")?
        }
    };
    // dockerd runs the entry through `sh -c "<path> <args> $@"`, unquoted.
    for path in [&target.cmd.binary, &target.cmd.config, &runtime] {
        if path
            .to_string_lossy()
            .contains(|c: char| c.is_whitespace() || "'\"\\$`;&|<>(){}*?[]#~".contains(c))
        {
            bail!(
                "{} has a character dockerd's runtime wrapper would mangle; use a plain path",
                path.display()
            );
        }
    }
    let existing = read_optional(daemon_json)?;
    let entry = install::docker_runtime_entry(&target.cmd, &runtime);
    let Some(merged) = install::daemon_json_with(existing.as_deref().unwrap_or(""), &entry)
        .with_context(|| daemon_json.display().to_string())?
    else {
        println!("unchanged {}", daemon_json.display());
        return Ok(());
    };
    let backup = backup_path(daemon_json);
    if let (Some(original), false, false) = (&existing, backup.exists(), target.dry_run) {
        let mode = std::fs::metadata(daemon_json)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .ok();
        write_new(&backup, original, mode.unwrap_or(0o600))?;
        println!("kept the original as {}", backup.display());
    }
    target.write(daemon_json, &merged)?;
    eprintln!(
        "nsbypass: reload dockerd (kill -HUP the daemon, or restart it), then: docker run --runtime {} -e NSBYPASS_NETWORK=...",
        install::DOCKER_RUNTIME_NAME
    );
    Ok(())
}

/// `uninstall podman`: removes the hooks.d files nsbypass wrote there.
pub fn uninstall_hooks_d(dir: &Path, dry_run: bool) -> Result<()> {
    for stage in install::STAGES {
        let path = dir.join(format!("nsbypass-{stage}.json"));
        match read_optional(&path)? {
            Some(text) if install::is_our_hooks_d_file(&text) => remove(&path, dry_run)?,
            Some(_) => eprintln!(
                "nsbypass: leaving {}: not written by nsbypass",
                path.display()
            ),
            None => {}
        }
    }
    Ok(())
}

/// `uninstall crio`: the hooks.d files and the drop-in.
pub fn uninstall_crio(hooks_dir: &Path, dropin_dir: &Path, dry_run: bool) -> Result<()> {
    uninstall_hooks_d(hooks_dir, dry_run)?;
    let path = dropin_dir.join(CRIO_DROPIN_FILE);
    match read_optional(&path)? {
        Some(text) if text.contains(install::MARKER) => remove(&path, dry_run)?,
        Some(_) => eprintln!(
            "nsbypass: leaving {}: not written by nsbypass",
            path.display()
        ),
        None => {}
    }
    Ok(())
}

/// `uninstall docker`: the runtime entry goes. If nothing else changed
/// since install, the original file comes back byte for byte (or, if
/// install created it, it is removed); otherwise only the entry is taken out.
pub fn uninstall_docker(daemon_json: &Path, dry_run: bool) -> Result<()> {
    let Some(existing) = read_optional(daemon_json)? else {
        return Ok(());
    };
    let Some(pruned) = install::daemon_json_without(&existing)
        .with_context(|| daemon_json.display().to_string())?
    else {
        println!("no nsbypass runtime in {}", daemon_json.display());
        return Ok(());
    };
    let backup = backup_path(daemon_json);
    let original = read_optional(&backup)?;
    let restored = match &original {
        Some(text) => install::parse_object(text, "backup").ok() == Some(pruned.clone()),
        None => pruned.is_empty(),
    };
    if dry_run {
        println!(
            "would take the nsbypass runtime out of {}",
            daemon_json.display()
        );
        return Ok(());
    }
    match (restored, original) {
        (true, Some(text)) => write_atomically(daemon_json, &text)?,
        (true, None) => std::fs::remove_file(daemon_json)
            .with_context(|| format!("remove {}", daemon_json.display()))?,
        (false, _) => write_atomically(
            daemon_json,
            &install::pretty(&serde_json::Value::Object(pruned)),
        )?,
    }
    if backup.exists() {
        std::fs::remove_file(&backup).with_context(|| format!("remove {}", backup.display()))?;
    }
    println!("took the nsbypass runtime out of {}", daemon_json.display());
    Ok(())
}

/// `cdi generate`: every profile of the config as a CDI device, resolved on
/// this host (globs expanded, sources checked) now.
pub fn cdi_generate(target: &Target, output: &Path) -> Result<()> {
    let config = Config::load(&target.cmd.config)?;
    let mut carries = Vec::new();
    for (name, profile) in &config.profiles {
        // The runtime applies a CDI device's edits itself, before any hook
        // could check who asked: a profile kept to some namespaces has no
        // place in a spec anyone on the host can name.
        if profile.allow_namespaces.is_some() {
            eprintln!(
                "nsbypass: cdi generate: profile {name} left out: it has allow_namespaces, which CDI cannot enforce"
            );
            continue;
        }
        // CDI device names start and end with a letter or digit.
        let edges = [name.chars().next(), name.chars().last()];
        if !edges
            .iter()
            .all(|c| c.is_some_and(|c| c.is_ascii_alphanumeric()))
        {
            bail!("profile {name} cannot be a CDI device name: it must start and end with a letter or digit");
        }
        let plan = profile::plan(std::slice::from_ref(name), &config)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        carries.push(plan.carry());
    }
    if carries.is_empty() {
        bail!(
            "{} defines no profiles CDI can carry (those with allow_namespaces are left out)",
            config.path.display()
        );
    }
    let spec = install::cdi_spec(&target.cmd, &carries);
    let yaml = serde_yaml_ng::to_string(&spec).context("writing YAML")?;
    target.write(
        output,
        &format!(
            "# {} cdi; regenerate after changing profiles.\n{yaml}",
            install::MARKER
        ),
    )
}

fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".nsbypass-backup");
    path.with_file_name(name)
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn remove(path: &Path, dry_run: bool) -> Result<()> {
    if dry_run {
        println!("would remove {}", path.display());
        return Ok(());
    }
    std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    println!("removed {}", path.display());
    Ok(())
}

/// Writes through a temporary file in the same directory and renames it
/// into place. A symlink is written through (its target is replaced, the
/// link stays); a replaced file keeps its mode, a new one gets 0644.
pub fn write_atomically(path: &Path, content: &str) -> Result<()> {
    let path = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) => path.to_owned(),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644);
    let tmp = dir.join(format!(
        ".{}.nsbypass-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, content, mode)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replace {}", path.display()))
}

/// Creates `path` (which must not exist) with `mode` from the start, so a
/// file holding secrets is never readable by others even briefly.
fn write_new(path: &Path, content: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// `name` looked up on `$PATH` (the installer's, not a container's).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
