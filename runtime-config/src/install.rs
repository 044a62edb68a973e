//! What installs nsbypass into each runtime, as data: hooks.d files for
//! podman and CRI-O, the CRI-O drop-in, the docker runtime entry, the CDI
//! spec, and the edit the docker runtime entry makes to a bundle's spec.
//!
//! Everything here is pure (text in, text out), so it is unit-tested and
//! `--dry-run` shows exactly what would be written; the `nsbypass` binary
//! does the file I/O.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, HookBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, MountBuilder,
};
use serde_json::{json, Map, Value};

use crate::bundle::{Bundle, SpecDevice, SpecMount};
use crate::profile::Rlimit;

/// Where a profile's fresh bpffs goes in the container.
pub const BPFFS_TARGET: &str = "/sys/fs/bpf";

/// The environment every generated hook entry runs with: never the
/// runtime's or the container's (a root hook that inherits `LD_PRELOAD`
/// from an image is NVIDIA's CVE-2025-23266).
pub const HOOK_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
/// Seconds a runtime waits for a generated hook before failing it.
pub const HOOK_TIMEOUT: i64 = 10;
/// hooks.d `when.annotations` key: the containers whose hooks run, those
/// with any `nsbypass.io/` annotation. Runtimes match it as a regular
/// expression anywhere in each key (containers/common's `When.Match`,
/// hence the `^`); every such key must reach the hook, which refuses the
/// ones it does not know, so that a misspelled `nsbypass.io/netwrok`
/// fails the container with one line instead of going unseen.
pub const REQUEST_ANNOTATION_PATTERN: &str = r"^nsbypass\.io/";
/// hooks.d `when.annotations` value for [`REQUEST_ANNOTATION_PATTERN`]:
/// any value, the empty one included (the hook says what is wrong with
/// it).
pub const REQUEST_VALUE_PATTERN: &str = ".*";
/// Set in a container's environment by the docker runtime entry: the
/// profiles it put in the spec (exactly those, one entry). Informational:
/// an image can set it too, so the hook does not read it but checks the
/// spec itself ([`check_in_spec`]).
pub const PROFILE_IN_SPEC_ENV: &str = "NSBYPASS_PROFILE_IN_SPEC";
/// The docker runtime name `install docker` registers.
pub const DOCKER_RUNTIME_NAME: &str = "nsbypass";
/// The CDI kind `cdi generate` writes.
pub const CDI_KIND: &str = "nsbypass.io/profile";
/// Marks files nsbypass writes, so uninstall removes only its own.
pub const MARKER: &str = "written by nsbypass install";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} is not valid JSON: {message}")]
    Json { what: String, message: String },
    #[error("{what}: {message}")]
    Shape { what: String, message: String },
}

/// The command every generated hook entry runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCommand {
    /// Absolute path of the nsbypass binary.
    pub binary: PathBuf,
    /// Absolute path of the config it reads.
    pub config: PathBuf,
}

impl HookCommand {
    pub fn args(&self, stage: &str) -> Vec<String> {
        vec![
            "nsbypass".into(),
            "--config".into(),
            self.config.display().to_string(),
            "hook".into(),
            stage.into(),
        ]
    }

    /// The OCI hook entry for `stage`, with explicit env and a timeout.
    pub fn oci_hook(&self, stage: &str) -> Hook {
        HookBuilder::default()
            .path(self.binary.clone())
            .args(self.args(stage))
            .env(vec![HOOK_ENV.to_owned()])
            .timeout(HOOK_TIMEOUT)
            .build()
            .expect("every field is set")
    }
}

/// The stages nsbypass registers for: setup and teardown.
pub const STAGES: [&str; 2] = ["prestart", "poststop"];

/// hooks.d files (schema 1.0.0), one per stage since each runs its own
/// arguments: `(file name, contents)`. They fire only for containers that
/// carry an `nsbypass.io/` annotation.
pub fn hooks_d_files(cmd: &HookCommand) -> Vec<(String, String)> {
    STAGES
        .iter()
        .map(|stage| {
            let file = json!({
                "version": "1.0.0",
                "hook": cmd.oci_hook(stage),
                "when": { "annotations": { REQUEST_ANNOTATION_PATTERN: REQUEST_VALUE_PATTERN } },
                "stages": [stage],
            });
            (format!("nsbypass-{stage}.json"), pretty(&file))
        })
        .collect()
}

/// Whether `text` is a hooks.d file nsbypass wrote (for uninstall).
pub fn is_our_hooks_d_file(text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let args: Vec<&str> = value["hook"]["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    args.first() == Some(&"nsbypass") && args.contains(&"hook")
}

/// hooks.d directories some CRI-O build or distribution reads by default
/// (OpenShift lists all three). A drop-in's `hooks_dir` replaces the whole
/// list, so every one of them stays on it.
pub const STANDARD_HOOKS_DIRS: [&str; 3] = [
    "/usr/share/containers/oci/hooks.d",
    "/etc/containers/oci/hooks.d",
    "/run/containers/oci/hooks.d",
];

/// The CRI-O drop-in putting `hooks_dir` on CRI-O's `hooks_dir` list,
/// beside the standard directories (other tools install hooks there).
pub fn crio_dropin(hooks_dir: &Path) -> String {
    let mut dirs: Vec<PathBuf> = STANDARD_HOOKS_DIRS.iter().map(PathBuf::from).collect();
    if !dirs.iter().any(|d| d == hooks_dir) {
        dirs.push(hooks_dir.to_owned());
    }
    let list = dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# {MARKER} crio; remove with `nsbypass uninstall crio`.\n\
         # CRI-O reads hooks_dir only at start: restart crio after changing it.\n\
         [crio.runtime]\nhooks_dir = [{list}]\n"
    )
}

/// The docker `runtimes` entry: nsbypass in runtime mode, exec'ing `runtime`.
pub fn docker_runtime_entry(cmd: &HookCommand, runtime: &Path) -> Value {
    json!({
        "path": cmd.binary,
        "runtimeArgs": [
            "--config", cmd.config,
            "runtime", "--runtime", runtime,
            "--",
        ],
    })
}

/// `daemon.json` with the nsbypass runtime entry set, everything else kept.
/// `None` when it is already there as given.
pub fn daemon_json_with(existing: &str, entry: &Value) -> Result<Option<String>, InstallError> {
    let mut config = parse_object(existing, "daemon.json")?;
    let runtimes = config
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(runtimes) = runtimes.as_object_mut() else {
        return Err(InstallError::Shape {
            what: "daemon.json".into(),
            message: "\"runtimes\" is not an object".into(),
        });
    };
    if runtimes.get(DOCKER_RUNTIME_NAME) == Some(entry) {
        return Ok(None);
    }
    runtimes.insert(DOCKER_RUNTIME_NAME.into(), entry.clone());
    Ok(Some(pretty(&Value::Object(config))))
}

/// `daemon.json` without the nsbypass runtime entry (and without an empty
/// `runtimes` left behind). `None` when there was no entry.
pub fn daemon_json_without(existing: &str) -> Result<Option<Map<String, Value>>, InstallError> {
    let mut config = parse_object(existing, "daemon.json")?;
    let Some(runtimes) = config.get_mut("runtimes").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    if runtimes.remove(DOCKER_RUNTIME_NAME).is_none() {
        return Ok(None);
    }
    if runtimes.is_empty() {
        config.remove("runtimes");
    }
    Ok(Some(config))
}

/// Parses a JSON object; an empty text is an empty object.
pub fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, InstallError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(InstallError::Shape {
            what: what.into(),
            message: "not a JSON object".into(),
        }),
        Err(e) => Err(InstallError::Json {
            what: what.into(),
            message: e.to_string(),
        }),
    }
}

/// JSON as nsbypass writes it: two-space indent, trailing newline.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n"
}

/// A profile's pieces resolved on the host, for runtimes that take them
/// through the spec (docker runtime entry, CDI) instead of the hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carry {
    pub profiles: Vec<String>,
    pub devices: Vec<CarriedDevice>,
    pub mounts: Vec<CarriedMount>,
    /// Host symlinks a mount glob matched. A spec has no symlink entry:
    /// each becomes a read-only bind of the file it leads to.
    pub links: Vec<CarriedLink>,
    pub preload: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Added to the process's bounding, effective and permitted sets (and
    /// ambient and inheritable for a process that is not root).
    pub capabilities: Vec<String>,
    /// Raised to at least these, soft and hard.
    pub rlimits: Vec<Rlimit>,
    /// A bpffs mount at [`BPFFS_TARGET`].
    pub bpffs: bool,
}

/// A host symlink to carry: at `target`, the file `source` it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedLink {
    pub target: PathBuf,
    pub source: PathBuf,
}

impl CarriedLink {
    fn as_mount(&self) -> CarriedMount {
        CarriedMount {
            source: self.source.clone(),
            target: self.target.clone(),
            directory: false,
            writable: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedDevice {
    pub source: PathBuf,
    pub target: PathBuf,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl CarriedDevice {
    fn kind(&self) -> LinuxDeviceType {
        if self.block {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        }
    }

    /// Whether the spec's `entry` is this device: path, type (`u` is an
    /// unbuffered character device) and numbers.
    fn is(&self, entry: &SpecDevice) -> bool {
        let kind = match self.block {
            true => entry.kind == "b",
            false => entry.kind == "c" || entry.kind == "u",
        };
        entry.path == self.target
            && kind
            && entry.major == Some(i64::from(self.major))
            && entry.minor == Some(i64::from(self.minor))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub directory: bool,
    /// Bound read-write (the profile's `writable = true`).
    pub writable: bool,
}

impl CarriedMount {
    /// Whether the spec's `entry` is this mount: a bind of the source on
    /// the target.
    fn is(&self, entry: &SpecMount) -> bool {
        absolute(&entry.destination) == self.target
            && entry.source.as_deref() == Some(self.source.as_path())
            && entry.is_bind()
    }

    /// Read-only (unless writable), nosuid, nodev, private: as the hook
    /// binds them.
    fn options(&self) -> Vec<String> {
        let bind = if self.directory { "rbind" } else { "bind" };
        let private = if self.directory {
            "rprivate"
        } else {
            "private"
        };
        let access = if self.writable { "rw" } else { "ro" };
        [bind, access, "nosuid", "nodev", private]
            .map(str::to_owned)
            .to_vec()
    }
}

impl Carry {
    /// "profile a" or "profiles a,b", for messages.
    fn who(&self) -> String {
        match self.profiles.len() {
            1 => format!("profile {}", self.profiles[0]),
            _ => format!("profiles {}", self.profiles.join(",")),
        }
    }

    /// The mounts as the spec has them: the links as binds of their files.
    pub fn spec_mounts(&self) -> Vec<CarriedMount> {
        let mut all = self.mounts.clone();
        all.extend(self.links.iter().map(CarriedLink::as_mount));
        all
    }

    /// The process environment additions: `LD_PRELOAD` from the preload
    /// list, and the profiles' env.
    pub fn env_entries(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if !self.preload.is_empty() {
            let list = self
                .preload
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            env.push(("LD_PRELOAD".to_owned(), list));
        }
        env.extend(self.env.iter().cloned());
        env
    }
}

/// The docker runtime entry's edit of a bundle's `config.json`: adds the
/// nsbypass hooks if `hooks` is given (never twice) and, for `carry`, the
/// device nodes with their cgroup rules (so the runtime itself creates and
/// grants them, on cgroup v1 and v2), the bind mounts and the environment.
///
/// The environment is edited as runc applies it, later entries overriding
/// earlier ones: a variable the container already sets keeps its effective
/// (last) value, except `LD_PRELOAD`, whose effective value gets the
/// profiles' libraries appended and which is left as one entry, and the
/// in-spec marker, which is left as one entry naming exactly
/// `carry.profiles` (none if that is empty). A device or mount the spec
/// already has exactly as `carry` has it is not added again; one it has
/// differently at the same path is an error. Editing twice is editing
/// once. Unknown fields are kept.
pub fn edit_spec(
    spec: &mut Value,
    hooks: Option<&HookCommand>,
    carry: &Carry,
) -> Result<(), InstallError> {
    let shape = |message: &str| InstallError::Shape {
        what: "config.json".into(),
        message: message.into(),
    };
    let root = spec
        .as_object_mut()
        .ok_or_else(|| shape("not a JSON object"))?;

    if let Some(cmd) = hooks {
        let hooks = object_at(root, "hooks").ok_or_else(|| shape("\"hooks\" is not an object"))?;
        for stage in STAGES {
            let list = array_at(hooks, stage)
                .ok_or_else(|| shape(&format!("\"hooks.{stage}\" is not a list")))?;
            let hook = serde_json::to_value(cmd.oci_hook(stage)).expect("hooks serialise");
            let ours = |h: &Value| h["path"] == hook["path"] && h["args"] == hook["args"];
            if !list.iter().any(ours) {
                list.push(hook);
            }
        }
    }

    if !carry.devices.is_empty() {
        let linux = object_at(root, "linux").ok_or_else(|| shape("\"linux\" is not an object"))?;
        let devices =
            array_at(linux, "devices").ok_or_else(|| shape("\"linux.devices\" is not a list"))?;
        for d in &carry.devices {
            let existing = devices
                .iter()
                .filter_map(|e| serde_json::from_value::<SpecDevice>(e.clone()).ok())
                .rfind(|e| e.path == d.target);
            if let Some(e) = existing {
                if d.is(&e) {
                    continue;
                }
                return Err(shape(&format!(
                    "\"linux.devices\" already has {} as {} {}:{}, where {} needs {} {}:{}",
                    d.target.display(),
                    e.kind.escape_debug(),
                    number(e.major),
                    number(e.minor),
                    carry.who(),
                    d.kind().as_str(),
                    d.major,
                    d.minor
                )));
            }
            let device = LinuxDeviceBuilder::default()
                .path(d.target.clone())
                .typ(d.kind())
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .file_mode(d.mode & 0o7777)
                .uid(d.uid)
                .gid(d.gid)
                .build()
                .expect("every field is set");
            devices.push(serde_json::to_value(device).expect("devices serialise"));
        }
        let resources = object_at(linux, "resources")
            .ok_or_else(|| shape("\"linux.resources\" is not an object"))?;
        let rules = array_at(resources, "devices")
            .ok_or_else(|| shape("\"linux.resources.devices\" is not a list"))?;
        for d in &carry.devices {
            let rule = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(d.kind())
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .access("rwm".to_owned())
                .build()
                .expect("every field is set");
            let rule = serde_json::to_value(rule).expect("rules serialise");
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }

    let carried_mounts = carry.spec_mounts();
    if !carried_mounts.is_empty() || carry.bpffs {
        let mounts = array_at(root, "mounts").ok_or_else(|| shape("\"mounts\" is not a list"))?;
        for m in &carried_mounts {
            let existing = mounts
                .iter()
                .filter_map(|e| serde_json::from_value::<SpecMount>(e.clone()).ok())
                .rfind(|e| absolute(&e.destination) == m.target);
            if let Some(e) = existing {
                if m.is(&e) {
                    continue;
                }
                return Err(shape(&format!(
                    "\"mounts\" already has a {} mount{} on {}, where {} binds {}",
                    e.kind.as_deref().unwrap_or("untyped").escape_debug(),
                    e.source
                        .map(|s| format!(" of {}", s.display().to_string().escape_debug()))
                        .unwrap_or_default(),
                    m.target.display(),
                    carry.who(),
                    m.source.display()
                )));
            }
            let mount = MountBuilder::default()
                .destination(m.target.clone())
                .typ("bind".to_owned())
                .source(m.source.clone())
                .options(m.options())
                .build()
                .map_err(|e| shape(&e.to_string()))?;
            mounts.push(serde_json::to_value(mount).expect("mounts serialise"));
        }
        if carry.bpffs {
            let existing = mounts
                .iter()
                .filter_map(|e| serde_json::from_value::<SpecMount>(e.clone()).ok())
                .rfind(|e| absolute(&e.destination) == Path::new(BPFFS_TARGET));
            match existing {
                Some(e) if e.kind.as_deref() == Some("bpf") => {}
                Some(e) => {
                    return Err(shape(&format!(
                    "\"mounts\" already has a {} mount on {BPFFS_TARGET}, where {} needs a bpffs",
                    e.kind.as_deref().unwrap_or("untyped").escape_debug(),
                    carry.who()
                )))
                }
                None => mounts.push(bpffs_mount()),
            }
        }
    }

    if !carry.capabilities.is_empty() {
        let user_is_root = root
            .get("process")
            .and_then(|p| p.get("user"))
            .and_then(|u| u.get("uid"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            == 0;
        let process =
            object_at(root, "process").ok_or_else(|| shape("\"process\" is not an object"))?;
        let caps = object_at(process, "capabilities")
            .ok_or_else(|| shape("\"process.capabilities\" is not an object"))?;
        // A process that is not root keeps capabilities across exec only
        // through the ambient set (which needs them inheritable too).
        let sets: &[&str] = match user_is_root {
            true => &["bounding", "effective", "permitted"],
            false => &[
                "bounding",
                "effective",
                "permitted",
                "inheritable",
                "ambient",
            ],
        };
        for set in sets {
            let list = array_at(caps, set)
                .ok_or_else(|| shape(&format!("\"process.capabilities.{set}\" is not a list")))?;
            for cap in &carry.capabilities {
                if !list.iter().any(|c| c.as_str() == Some(cap)) {
                    list.push(Value::String(cap.clone()));
                }
            }
        }
    }

    if !carry.rlimits.is_empty() {
        let process =
            object_at(root, "process").ok_or_else(|| shape("\"process\" is not an object"))?;
        let limits = array_at(process, "rlimits")
            .ok_or_else(|| shape("\"process.rlimits\" is not a list"))?;
        for limit in &carry.rlimits {
            let (kind, want) = (limit.spec_name(), limit.spec_value());
            match limits
                .iter_mut()
                .rfind(|l| l["type"].as_str() == Some(&kind))
            {
                Some(entry) => {
                    for key in ["soft", "hard"] {
                        if entry[key].as_u64().is_none_or(|v| v < want) {
                            entry[key] = want.into();
                        }
                    }
                }
                None => limits.push(json!({ "type": kind, "soft": want, "hard": want })),
            }
        }
    }

    let mut additions = carry.env_entries();
    if !carry.profiles.is_empty() {
        additions.push((PROFILE_IN_SPEC_ENV.to_owned(), carry.profiles.join(",")));
    }
    let has_marker = root
        .get("process")
        .and_then(|p| p.get("env"))
        .and_then(Value::as_array)
        .is_some_and(|env| {
            env.iter()
                .any(|e| env_value(e, PROFILE_IN_SPEC_ENV).is_some())
        });
    if !additions.is_empty() || has_marker {
        let process =
            object_at(root, "process").ok_or_else(|| shape("\"process\" is not an object"))?;
        let env = array_at(process, "env").ok_or_else(|| shape("\"process.env\" is not a list"))?;
        // The marker says what this edit carried, whatever the image set.
        env.retain(|e| env_value(e, PROFILE_IN_SPEC_ENV).is_none());
        for (key, value) in additions {
            set_env(env, &key, &value);
        }
    }
    Ok(())
}

/// Sets `key=value` in a spec's env list, by the rules of `edit_spec`:
/// runc applies the list in order, so the last entry of a key is the one
/// the process sees.
/// Docker has no annotations of its own to speak of: the runtime entry
/// turns the container's `NSBYPASS_NETWORK`/`_IP`/`_PROFILE` environment
/// (`-e`, and an image's `ENV`, which docker cannot tell apart) into the
/// matching `nsbypass.io/` annotations in the spec, unless the spec has
/// them already, so that the hooks it adds read annotations only.
pub fn env_requests_to_annotations(
    spec: &mut Value,
    bundle: &crate::Bundle,
) -> Result<(), InstallError> {
    use crate::request::{
        IP_ANNOTATION, IP_ENV, NETWORK_ANNOTATION, NETWORK_ENV, PROFILE_ANNOTATION, PROFILE_ENV,
    };
    let shape = |message: &str| InstallError::Shape {
        what: "config.json".into(),
        message: message.into(),
    };
    let root = spec
        .as_object_mut()
        .ok_or_else(|| shape("not a JSON object"))?;
    for (annotation, env) in [
        (NETWORK_ANNOTATION, NETWORK_ENV),
        (IP_ANNOTATION, IP_ENV),
        (PROFILE_ANNOTATION, PROFILE_ENV),
    ] {
        let Some(value) = bundle.env_var(env) else {
            continue;
        };
        if bundle.annotations.contains_key(annotation) {
            continue;
        }
        object_at(root, "annotations")
            .ok_or_else(|| shape("\"annotations\" is not an object"))?
            .insert(annotation.to_owned(), Value::String(value.to_owned()));
    }
    Ok(())
}

fn set_env(env: &mut Vec<Value>, key: &str, value: &str) {
    let Some(last) = env.iter().rposition(|e| env_value(e, key).is_some()) else {
        env.push(Value::String(format!("{key}={value}")));
        return;
    };
    if key != "LD_PRELOAD" {
        return; // The container's own value wins.
    }
    let old = env_value(&env[last], key).unwrap_or_default();
    // ld.so takes spaces or colons between entries.
    let mut list: Vec<&str> = old.split([':', ' ']).filter(|p| !p.is_empty()).collect();
    for path in value.split(':') {
        if !list.contains(&path) {
            list.push(path);
        }
    }
    let merged = Value::String(format!("{key}={}", list.join(":")));
    // One entry: the earlier ones were overridden anyway.
    let mut i = 0;
    env.retain(|e| {
        let keep = i == last || env_value(e, key).is_none();
        i += 1;
        keep
    });
    let last = env
        .iter()
        .position(|e| env_value(e, key).is_some())
        .expect("the effective entry is kept");
    env[last] = merged;
}

/// The value of a `key=value` env entry for `key`.
fn env_value<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    entry.as_str()?.strip_prefix(key)?.strip_prefix('=')
}

/// Whether the host-resolved `carry` is really in the spec `bundle` was
/// read from, as the container will see it: every mount a bind of that
/// source on that destination (the last mount on or above the target, so
/// not shadowed), every device in `linux.devices` with that path, type and
/// numbers, every preload library in the effective `LD_PRELOAD`. The
/// in-spec marker is not read: an image can set it. `Err` names the first
/// piece missing.
pub fn check_in_spec(carry: &Carry, bundle: &Bundle) -> Result<(), String> {
    if carry.bpffs {
        let seen = bundle
            .mounts
            .iter()
            .rev()
            .find(|s| Path::new(BPFFS_TARGET).starts_with(absolute(&s.destination)));
        if !seen.is_some_and(|s| {
            absolute(&s.destination) == Path::new(BPFFS_TARGET) && s.kind.as_deref() == Some("bpf")
        }) {
            return Err(format!("the spec does not mount a bpffs on {BPFFS_TARGET}"));
        }
    }
    for m in &carry.spec_mounts() {
        let seen = bundle
            .mounts
            .iter()
            .rev()
            .find(|s| m.target.starts_with(absolute(&s.destination)));
        if !seen.is_some_and(|s| m.is(s)) {
            return Err(format!(
                "the spec does not bind {} on {}",
                m.source.display(),
                m.target.display()
            ));
        }
    }
    for d in &carry.devices {
        let seen = bundle.devices.iter().rev().find(|s| s.path == d.target);
        if !seen.is_some_and(|s| d.is(s)) {
            return Err(format!(
                "the spec has no device {} {} {}:{}",
                d.target.display(),
                d.kind().as_str(),
                d.major,
                d.minor
            ));
        }
    }
    let preload = bundle.env_var("LD_PRELOAD").unwrap_or_default();
    let listed: Vec<&str> = preload.split([':', ' ']).collect();
    for path in &carry.preload {
        let path = path.display().to_string();
        if !listed.contains(&path.as_str()) {
            return Err(format!("LD_PRELOAD in the spec does not list {path}"));
        }
    }
    Ok(())
}

/// Whether the process `bundle` specifies has `capabilities` and at
/// least `rlimits`; where the spec sets no limit of a kind, the process
/// keeps the one it has now, which `live` reads (`None`: unknown, taken as
/// missing). `Err` names everything missing and the runtime flags that add
/// it (docker's and podman's spelling), for where nsbypass cannot edit
/// the spec (hooks.d, CDI, a bundle of one's own).
pub fn check_process(
    capabilities: &[String],
    rlimits: &[Rlimit],
    bundle: &Bundle,
    live: impl Fn(&str) -> Option<(u64, u64)>,
) -> Result<(), String> {
    let sets = &bundle.capabilities;
    let mut lacking: Vec<String> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    for cap in capabilities {
        let mut needed = vec![&sets.bounding, &sets.effective, &sets.permitted];
        if bundle.uid != 0 {
            needed.push(&sets.ambient);
        }
        if !needed.iter().all(|set| set.contains(cap)) {
            lacking.push(cap.clone());
            flags.push(format!(
                "--cap-add {}",
                cap.strip_prefix("CAP_").unwrap_or(cap)
            ));
        }
    }
    for limit in rlimits {
        let want = limit.spec_value();
        let has = match bundle.rlimits.iter().rfind(|l| l.kind == limit.spec_name()) {
            Some(l) => Some((l.soft, l.hard)),
            None => live(limit.name),
        };
        if !has.is_some_and(|(soft, hard)| soft >= want && hard >= want) {
            let now = match has {
                Some((soft, _)) if soft == u64::MAX => "unlimited".to_owned(),
                Some((soft, _)) => soft.to_string(),
                None => "unknown".to_owned(),
            };
            let need = match limit.value {
                None => "unlimited".to_owned(),
                Some(n) => n.to_string(),
            };
            lacking.push(format!("{} {need} (it has {now})", limit.spec_name()));
            flags.push(limit.ulimit_flag());
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the container's process lacks {}; start it with {} (the docker runtime entry adds them itself)",
        lacking.join(", "),
        flags.join(" ")
    ))
}

/// The spec's bpffs mount, as runtime mode adds it.
fn bpffs_mount() -> Value {
    json!({
        "destination": BPFFS_TARGET,
        "type": "bpf",
        "source": "bpf",
        "options": ["nosuid", "nodev", "noexec"],
    })
}

/// A mount destination as runc takes it: relative ones are under `/`.
fn absolute(destination: &Path) -> PathBuf {
    Path::new("/").join(destination)
}

fn number(n: Option<i64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// The CDI spec for `profiles`: one device per profile (its nodes, mounts
/// and env), and the nsbypass hooks once for the whole kind. Device nodes
/// name only paths: the CDI runtime reads major and minor from the host
/// node when the container is created (Onload's majors are dynamic). CDI
/// sets env by name, replacing: a container's own `LD_PRELOAD`, or another
/// nsbypass device's, is replaced by this device's.
pub fn cdi_spec(cmd: &HookCommand, profiles: &[Carry]) -> Value {
    let devices: Vec<Value> = profiles
        .iter()
        .map(|carry| {
            let nodes: Vec<Value> = carry
                .devices
                .iter()
                .map(|d| json!({ "path": d.target, "hostPath": d.source }))
                .collect();
            let mut mounts: Vec<Value> = carry
                .spec_mounts()
                .iter()
                .map(|m| json!({ "hostPath": m.source, "containerPath": m.target, "options": m.options() }))
                .collect();
            if carry.bpffs {
                mounts.push(json!({
                    "hostPath": "bpf",
                    "containerPath": BPFFS_TARGET,
                    "type": "bpf",
                    "options": ["nosuid", "nodev", "noexec"],
                }));
            }
            let env: Vec<String> = carry
                .env_entries()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            json!({
                "name": carry.profiles.join(","),
                "containerEdits": { "deviceNodes": nodes, "mounts": mounts, "env": env },
            })
        })
        .collect();
    let hooks: Vec<Value> = STAGES
        .iter()
        .map(|stage| {
            json!({
                "hookName": stage,
                "path": cmd.binary,
                "args": cmd.args(stage),
                "env": [HOOK_ENV],
                "timeout": HOOK_TIMEOUT,
            })
        })
        .collect();
    json!({
        "cdiVersion": "0.5.0",
        "kind": CDI_KIND,
        "devices": devices,
        "containerEdits": { "hooks": hooks },
    })
}

/// `map[key]` as an object, created if absent (or null); `None` if it is
/// something else.
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// `map[key]` as an array, created if absent (or null).
fn array_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    let slot = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> HookCommand {
        HookCommand {
            binary: "/usr/local/bin/nsbypass".into(),
            config: "/etc/nsbypass/config.toml".into(),
        }
    }

    fn carry() -> Carry {
        Carry {
            profiles: vec!["onload".into()],
            devices: vec![CarriedDevice {
                source: "/dev/onload".into(),
                target: "/dev/onload".into(),
                block: false,
                major: 241,
                minor: 0,
                mode: 0o20666,
                uid: 0,
                gid: 0,
            }],
            mounts: vec![
                CarriedMount {
                    source: "/usr/lib64/libonload.so.1".into(),
                    target: "/usr/lib64/libonload.so".into(),
                    directory: false,
                    writable: false,
                },
                CarriedMount {
                    source: "/opt/onload/bin".into(),
                    target: "/usr/local/onload/bin".into(),
                    directory: true,
                    writable: false,
                },
            ],
            preload: vec!["/usr/lib64/libonload.so".into()],
            env: vec![("EF_POLL_USEC".into(), "100000".into())],
            ..Carry::default()
        }
    }

    #[test]
    fn hooks_d_files_run_only_for_requests_with_explicit_env() {
        let files = hooks_d_files(&cmd());
        assert_eq!(files.len(), 2);
        let (name, text) = &files[0];
        assert_eq!(name, "nsbypass-prestart.json");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["stages"], json!(["prestart"]));
        assert_eq!(
            v["hook"]["args"],
            json!([
                "nsbypass",
                "--config",
                "/etc/nsbypass/config.toml",
                "hook",
                "prestart"
            ])
        );
        assert_eq!(v["hook"]["env"], json!([HOOK_ENV]));
        assert_eq!(v["hook"]["timeout"], 10);
        assert_eq!(v["when"]["annotations"][REQUEST_ANNOTATION_PATTERN], ".*");
        assert!(is_our_hooks_d_file(text));
        assert!(!is_our_hooks_d_file(
            r#"{"hook":{"args":["nvidia-container-toolkit","prestart"]}}"#
        ));
    }

    #[test]
    fn crio_dropin_keeps_the_standard_directories() {
        let standard = r#""/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d", "/run/containers/oci/hooks.d""#;
        let text = crio_dropin(Path::new("/etc/containers/oci/hooks.d"));
        assert!(
            text.contains(&format!("hooks_dir = [{standard}]")),
            "{text}"
        );
        assert!(text.contains(MARKER) && text.contains("[crio.runtime]"));
        let text = crio_dropin(Path::new("/opt/hooks.d"));
        assert!(
            text.contains(&format!(r#"hooks_dir = [{standard}, "/opt/hooks.d"]"#)),
            "{text}"
        );
    }

    #[test]
    fn the_when_pattern_selects_every_nsbypass_annotation_and_nothing_else() {
        // As containers/common matches it: unanchored, key then value.
        let key = regex::Regex::new(REQUEST_ANNOTATION_PATTERN).unwrap();
        let value = regex::Regex::new(REQUEST_VALUE_PATTERN).unwrap();
        for k in [
            "nsbypass.io/network",
            "nsbypass.io/profile",
            "nsbypass.io/ip",
            "nsbypass.io/netwrok",
            "nsbypass.io/",
        ] {
            assert!(key.is_match(k), "{k}");
        }
        for k in [
            "xnsbypass.io/network",
            "nsbypassXio/network",
            "io.kubernetes.pod.name",
            "example.com/nsbypass.io/network",
        ] {
            assert!(!key.is_match(k), "{k}");
        }
        assert!(value.is_match("") && value.is_match("fast"));
    }

    #[test]
    fn daemon_json_merge_keeps_everything_else_and_round_trips() {
        let entry = docker_runtime_entry(&cmd(), Path::new("/usr/sbin/runc"));
        let before = r#"{"log-level": "warn", "runtimes": {"kata": {"path": "/usr/bin/kata"}}}"#;
        let merged = daemon_json_with(before, &entry).unwrap().unwrap();
        let v: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["log-level"], "warn");
        assert_eq!(v["runtimes"]["kata"]["path"], "/usr/bin/kata");
        assert_eq!(
            v["runtimes"]["nsbypass"]["runtimeArgs"],
            json!([
                "--config",
                "/etc/nsbypass/config.toml",
                "runtime",
                "--runtime",
                "/usr/sbin/runc",
                "--"
            ])
        );
        assert_eq!(
            daemon_json_with(&merged, &entry).unwrap(),
            None,
            "idempotent"
        );
        let removed = daemon_json_without(&merged).unwrap().unwrap();
        assert_eq!(
            Value::Object(removed),
            serde_json::from_str::<Value>(before).unwrap()
        );
        let fresh = daemon_json_with("", &entry).unwrap().unwrap();
        assert!(daemon_json_without(&fresh).unwrap().unwrap().is_empty());
        assert!(daemon_json_without("{}").unwrap().is_none());
        assert!(matches!(
            daemon_json_with("[1]", &entry),
            Err(InstallError::Shape { .. })
        ));
        assert!(matches!(
            daemon_json_with("{", &entry),
            Err(InstallError::Json { .. })
        ));
    }

    #[test]
    fn spec_edit_adds_hooks_once_devices_with_rules_mounts_and_env() {
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {"env": ["PATH=/bin", "LD_PRELOAD=/lib/libmine.so", "EF_POLL_USEC=5"]},
            "hooks": {"prestart": [{"path": "/usr/bin/other"}]},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
            "vendorThing": {"kept": true}
        });
        let mut two = carry();
        two.preload.push("/usr/lib64/libonload_ext.so".into());
        for _ in 0..2 {
            edit_spec(&mut spec, Some(&cmd()), &two).unwrap();
        }
        assert_eq!(spec["vendorThing"]["kept"], true);
        assert_eq!(
            spec["hooks"]["prestart"].as_array().unwrap().len(),
            2,
            "ours once, theirs kept"
        );
        assert_eq!(spec["hooks"]["poststop"][0]["args"][4], "poststop");
        assert_eq!(
            spec["linux"]["devices"],
            json!([{"path": "/dev/onload", "type": "c", "major": 241, "minor": 0, "fileMode": 0o666, "uid": 0, "gid": 0}])
        );
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0]["allow"], false, "the default deny stays first");
        assert_eq!(
            rules[1],
            json!({"allow": true, "type": "c", "major": 241, "minor": 0, "access": "rwm"})
        );
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[0]["options"],
            json!(["bind", "ro", "nosuid", "nodev", "private"])
        );
        assert_eq!(mounts[1]["options"][0], "rbind");
        let env: Vec<&str> = spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(
            env,
            [
                "PATH=/bin",
                "LD_PRELOAD=/lib/libmine.so:/usr/lib64/libonload.so:/usr/lib64/libonload_ext.so",
                "EF_POLL_USEC=5",
                "NSBYPASS_PROFILE_IN_SPEC=onload"
            ]
        );
    }

    #[test]
    fn env_edge_cases_and_profile_only_edits_without_hooks() {
        let mut spec = json!({"process": {"env": ["LD_PRELOAD=", "NSBYPASS_PROFILE_IN_SPEC="]}});
        edit_spec(&mut spec, None, &carry()).unwrap();
        assert_eq!(
            spec["process"]["env"],
            json!([
                "LD_PRELOAD=/usr/lib64/libonload.so",
                "EF_POLL_USEC=100000",
                "NSBYPASS_PROFILE_IN_SPEC=onload"
            ])
        );
        assert!(spec.get("hooks").is_none(), "profiles alone need no hooks");
    }

    fn env_of(spec: &Value) -> Vec<&str> {
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect()
    }

    fn bundle_of(spec: &Value) -> Bundle {
        Bundle::parse(Path::new("/b"), spec.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn docker_env_requests_become_annotations_unless_the_spec_has_them() {
        let mut spec = json!({
            "process": {"env": ["PATH=/bin", "NSBYPASS_NETWORK=fast", "NSBYPASS_IP=fast=10.0.0.9", "NSBYPASS_NETWORK=slow"]},
            "annotations": {"nsbypass.io/ip": "fast=10.0.0.5"},
        });
        let bundle =
            crate::Bundle::parse(Path::new("/b"), &serde_json::to_vec(&spec).unwrap()).unwrap();
        env_requests_to_annotations(&mut spec, &bundle).unwrap();
        assert_eq!(
            spec["annotations"],
            json!({"nsbypass.io/network": "slow", "nsbypass.io/ip": "fast=10.0.0.5"}),
            "the last env value; an annotation already there wins"
        );
        let mut none = json!({"process": {"env": ["PATH=/bin"]}});
        let bundle =
            crate::Bundle::parse(Path::new("/b"), br#"{"process": {"env": ["PATH=/bin"]}}"#)
                .unwrap();
        env_requests_to_annotations(&mut none, &bundle).unwrap();
        assert_eq!(none, json!({"process": {"env": ["PATH=/bin"]}}));
    }

    #[test]
    fn editing_twice_is_editing_once() {
        let mut once = json!({
            "process": {"env": ["PATH=/bin", "NSBYPASS_NETWORK=fast"]},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}
        });
        edit_spec(&mut once, Some(&cmd()), &carry()).unwrap();
        let mut twice = once.clone();
        edit_spec(&mut twice, Some(&cmd()), &carry()).unwrap();
        assert_eq!(twice, once);
        assert_eq!(
            once["linux"]["resources"]["devices"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "the deny and one allow rule"
        );
    }

    #[test]
    fn duplicate_env_entries_are_edited_as_runc_applies_them() {
        let mut spec = json!({"process": {"env": [
            "LD_PRELOAD=/first.so",
            "EF_POLL_USEC=1",
            "NSBYPASS_PROFILE_IN_SPEC=onload",
            "LD_PRELOAD=/second.so /third.so",
            "EF_POLL_USEC=2",
            "NSBYPASS_PROFILE_IN_SPEC=bogus",
        ]}});
        edit_spec(&mut spec, None, &carry()).unwrap();
        assert_eq!(
            env_of(&spec),
            [
                "EF_POLL_USEC=1",
                "LD_PRELOAD=/second.so:/third.so:/usr/lib64/libonload.so",
                "EF_POLL_USEC=2",
                "NSBYPASS_PROFILE_IN_SPEC=onload"
            ],
            "LD_PRELOAD merged into the last entry and left once, EF_POLL_USEC as it was"
        );
        let b = bundle_of(&spec);
        assert_eq!(b.env_var("EF_POLL_USEC"), Some("2"), "the container's wins");
        assert_eq!(b.env_var(PROFILE_IN_SPEC_ENV), Some("onload"));
    }

    #[test]
    fn the_marker_names_exactly_what_was_carried() {
        let image = json!({"process": {"env": [
            "NSBYPASS_NETWORK=fast",
            "NSBYPASS_PROFILE_IN_SPEC=rtp",
            "NSBYPASS_PROFILE_IN_SPEC=onload,rtp",
        ]}});
        let mut spec = image.clone();
        edit_spec(&mut spec, Some(&cmd()), &Carry::default()).unwrap();
        assert_eq!(env_of(&spec), ["NSBYPASS_NETWORK=fast"], "nothing carried");
        let mut spec = image.clone();
        edit_spec(&mut spec, None, &carry()).unwrap();
        let markers: Vec<&str> = env_of(&spec)
            .into_iter()
            .filter(|e| e.starts_with("NSBYPASS_PROFILE_IN_SPEC="))
            .collect();
        assert_eq!(markers, ["NSBYPASS_PROFILE_IN_SPEC=onload"]);
        let mut spec = json!({"annotations": {"nsbypass.io/network": "fast"}});
        edit_spec(&mut spec, Some(&cmd()), &Carry::default()).unwrap();
        assert!(spec.get("process").is_none(), "no env to edit, none made");
    }

    #[test]
    fn a_device_or_mount_the_spec_has_differently_is_an_error() {
        // As `docker run --device /dev/onload -v SRC:DST` would put them.
        let mut same = json!({
            "mounts": [{"destination": "/usr/lib64/libonload.so", "type": "bind",
                        "source": "/usr/lib64/libonload.so.1", "options": ["rbind", "rprivate"]}],
            "linux": {"devices": [{"path": "/dev/onload", "type": "c", "major": 241, "minor": 0}],
                      "resources": {"devices": [{"allow": true, "type": "c", "major": 241, "minor": 0, "access": "rwm"}]}}
        });
        edit_spec(&mut same, None, &carry()).unwrap();
        assert_eq!(same["linux"]["devices"].as_array().unwrap().len(), 1);
        assert_eq!(
            same["linux"]["resources"]["devices"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            same["mounts"].as_array().unwrap().len(),
            2,
            "only the dir added"
        );

        let cases = [
            (
                json!({"linux": {"devices": [{"path": "/dev/onload", "type": "c", "major": 1, "minor": 3}]}}),
                "config.json: \"linux.devices\" already has /dev/onload as c 1:3, where profile onload needs c 241:0",
            ),
            (
                json!({"linux": {"devices": [{"path": "/dev/onload", "type": "b", "major": 241, "minor": 0}]}}),
                "already has /dev/onload as b 241:0",
            ),
            (
                json!({"mounts": [{"destination": "/usr/lib64/libonload.so", "type": "bind", "source": "/tmp/evil.so", "options": ["rbind"]}]}),
                "config.json: \"mounts\" already has a bind mount of /tmp/evil.so on /usr/lib64/libonload.so, where profile onload binds /usr/lib64/libonload.so.1",
            ),
            (
                json!({"mounts": [{"destination": "/usr/local/onload/bin", "type": "tmpfs", "source": "/opt/onload/bin"}]}),
                "a tmpfs mount of /opt/onload/bin on /usr/local/onload/bin",
            ),
        ];
        for (mut spec, want) in cases {
            let got = edit_spec(&mut spec, None, &carry())
                .unwrap_err()
                .to_string();
            assert!(got.contains(want), "got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn what_the_spec_has_differently_is_one_line_whatever_it_holds() {
        // Caught by the one-line check of fuzz/fuzz_targets/edit_spec.rs:
        // the spec's own type and source were printed raw.
        let cases = [
            (
                json!({"linux": {"devices": [{"path": "/dev/onload", "type": "c\n", "major": 1, "minor": 3}]}}),
                "already has /dev/onload as c\\n 1:3,",
            ),
            (
                json!({"mounts": [{"destination": "/usr/lib64/libonload.so", "type": "x\ny", "source": "/a\nb"}]}),
                "already has a x\\ny mount of /a\\nb on /usr/lib64/libonload.so,",
            ),
        ];
        for (mut spec, want) in cases {
            let got = edit_spec(&mut spec, None, &carry())
                .unwrap_err()
                .to_string();
            assert!(got.contains(want), "got: {got}\nwant: {want}");
            assert!(!got.contains('\n'), "{got:?}");
        }
    }

    #[test]
    fn odd_shapes_are_one_line_errors_and_null_is_absent() {
        let cases = [
            (
                json!({"hooks": [], "process": {"env": []}}),
                "\"hooks\" is not an object",
            ),
            (
                json!({"hooks": {"prestart": {}}}),
                "\"hooks.prestart\" is not a list",
            ),
            (
                json!({"hooks": {"poststop": "x"}}),
                "\"hooks.poststop\" is not a list",
            ),
            (
                json!({"process": {"env": "PATH=/bin"}}),
                "\"process.env\" is not a list",
            ),
            (json!({"process": []}), "\"process\" is not an object"),
            (json!({"mounts": {}}), "\"mounts\" is not a list"),
            (json!({"linux": 1}), "\"linux\" is not an object"),
            (
                json!({"linux": {"devices": {}}}),
                "\"linux.devices\" is not a list",
            ),
            (json!([]), "not a JSON object"),
        ];
        for (mut spec, want) in cases {
            let got = edit_spec(&mut spec, Some(&cmd()), &carry())
                .unwrap_err()
                .to_string();
            assert_eq!(got, format!("config.json: {want}"));
        }
        let mut spec = json!({"hooks": null, "process": null, "linux": null, "mounts": null});
        edit_spec(&mut spec, Some(&cmd()), &carry()).unwrap();
        assert_eq!(spec["hooks"]["prestart"][0]["args"][4], "prestart");
        assert_eq!(bundle_of(&spec).mounts.len(), 2);
    }

    #[test]
    fn what_the_edit_carries_is_verified_in_the_spec() {
        let mut spec = json!({"process": {"env": ["LD_PRELOAD=/mine.so"]}});
        edit_spec(&mut spec, None, &carry()).unwrap();
        assert_eq!(check_in_spec(&carry(), &bundle_of(&spec)), Ok(()));
        assert_eq!(check_in_spec(&Carry::default(), &Bundle::default()), Ok(()));
    }

    #[test]
    fn the_marker_alone_is_not_a_profile_in_the_spec() {
        let marker_only = json!({"process": {"env": [
            "NSBYPASS_PROFILE=onload", "NSBYPASS_PROFILE_IN_SPEC=onload",
            "LD_PRELOAD=/usr/lib64/libonload.so"
        ]}});
        assert_eq!(
            check_in_spec(&carry(), &bundle_of(&marker_only)),
            Err(
                "the spec does not bind /usr/lib64/libonload.so.1 on /usr/lib64/libonload.so"
                    .into()
            )
        );
        let mut good = json!({});
        edit_spec(&mut good, None, &carry()).unwrap();
        type Tamper = fn(&mut Value);
        let cases: [(Tamper, &str); 7] = [
            (
                |s| s["mounts"][0]["source"] = json!("/tmp/evil.so"),
                "the spec does not bind /usr/lib64/libonload.so.1 on /usr/lib64/libonload.so",
            ),
            (
                |s| s["mounts"][1] = json!({"destination": "/usr/local/onload/bin", "type": "tmpfs", "source": "/opt/onload/bin"}),
                "the spec does not bind /opt/onload/bin on /usr/local/onload/bin",
            ),
            (
                |s| {
                    s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/usr/lib64", "type": "bind", "source": "/srv/lib", "options": ["rbind"]}))
                },
                "the spec does not bind /usr/lib64/libonload.so.1 on /usr/lib64/libonload.so",
            ),
            (
                |s| s["linux"]["devices"][0]["minor"] = json!(1),
                "the spec has no device /dev/onload c 241:0",
            ),
            (
                |s| s["linux"]["devices"][0]["type"] = json!("b"),
                "the spec has no device /dev/onload c 241:0",
            ),
            (
                |s| {
                    s["process"]["env"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!("LD_PRELOAD=/mine.so"))
                },
                "LD_PRELOAD in the spec does not list /usr/lib64/libonload.so",
            ),
            (
                |s| s["process"]["env"] = json!(["LD_PRELOAD=/usr/lib64/libonload.so.2"]),
                "LD_PRELOAD in the spec does not list /usr/lib64/libonload.so",
            ),
        ];
        for (tamper, want) in cases {
            let mut spec = good.clone();
            tamper(&mut spec);
            assert_eq!(check_in_spec(&carry(), &bundle_of(&spec)), Err(want.into()));
        }
        // Relative destinations are under /, and a "u" node is a character device.
        let mut spec = good.clone();
        spec["mounts"][0]["destination"] = json!("usr/lib64/libonload.so");
        spec["linux"]["devices"][0]["type"] = json!("u");
        assert_eq!(check_in_spec(&carry(), &bundle_of(&spec)), Ok(()));
    }

    #[test]
    fn cdi_spec_names_paths_only_and_carries_hooks_once() {
        let spec = cdi_spec(&cmd(), &[carry()]);
        assert_eq!(spec["kind"], CDI_KIND);
        let device = &spec["devices"][0];
        assert_eq!(device["name"], "onload");
        assert_eq!(
            device["containerEdits"]["deviceNodes"],
            json!([{"path": "/dev/onload", "hostPath": "/dev/onload"}])
        );
        assert_eq!(
            device["containerEdits"]["env"][0],
            "LD_PRELOAD=/usr/lib64/libonload.so"
        );
        assert_eq!(spec["containerEdits"]["hooks"][1]["hookName"], "poststop");
        assert_eq!(spec["containerEdits"]["hooks"][0]["env"], json!([HOOK_ENV]));
    }

    #[test]
    fn capabilities_limits_and_bpffs_go_into_the_spec_and_the_process_check_names_the_flags() {
        let memlock = Rlimit {
            name: "memlock",
            value: None,
        };
        let carry = Carry {
            profiles: vec!["dpdk".into()],
            capabilities: vec!["CAP_BPF".into(), "CAP_NET_ADMIN".into()],
            rlimits: vec![memlock],
            bpffs: true,
            links: vec![CarriedLink {
                target: "/usr/lib/librte_eal.so.23".into(),
                source: "/usr/lib/librte_eal.so.23.0".into(),
            }],
            ..Carry::default()
        };
        let mut spec = json!({
            "process": {
                "capabilities": { "bounding": ["CAP_KILL"], "effective": ["CAP_KILL", "CAP_BPF"] },
                "rlimits": [{ "type": "RLIMIT_MEMLOCK", "soft": 65536, "hard": 65536 }],
            },
            "mounts": [{ "destination": "/sys", "type": "sysfs", "source": "sysfs" }],
        });
        let before = bundle_of(&spec);
        let err =
            check_process(&carry.capabilities, &carry.rlimits, &before, |_| None).unwrap_err();
        assert_eq!(
            err,
            "the container's process lacks CAP_BPF, CAP_NET_ADMIN, RLIMIT_MEMLOCK unlimited (it has 65536); \
             start it with --cap-add BPF --cap-add NET_ADMIN --ulimit memlock=-1 (the docker runtime entry adds them itself)"
        );
        assert!(check_in_spec(&carry, &before).is_err());
        edit_spec(&mut spec, None, &carry).unwrap();
        let once = spec.clone();
        edit_spec(&mut spec, None, &carry).unwrap();
        assert_eq!(spec, once, "editing twice is editing once");
        let after = bundle_of(&spec);
        check_process(&carry.capabilities, &carry.rlimits, &after, |_| None).unwrap();
        check_in_spec(&carry, &after).unwrap();
        assert_eq!(
            spec["process"]["capabilities"]["permitted"],
            json!(["CAP_BPF", "CAP_NET_ADMIN"])
        );
        assert_eq!(spec["process"]["rlimits"][0]["soft"], json!(u64::MAX));
        assert_eq!(
            spec["mounts"][1]["destination"],
            "/usr/lib/librte_eal.so.23"
        );
        assert_eq!(spec["mounts"][1]["source"], "/usr/lib/librte_eal.so.23.0");
        assert_eq!(spec["mounts"][2]["type"], "bpf");
        // Without a spec entry the live limit counts.
        let bare = bundle_of(&json!({}));
        let caps: &[String] = &[];
        check_process(caps, &[memlock], &bare, |_| Some((u64::MAX, u64::MAX))).unwrap();
        let err = check_process(caps, &[memlock], &bare, |_| Some((8 << 20, 8 << 20))).unwrap_err();
        assert!(
            err.contains("RLIMIT_MEMLOCK unlimited (it has 8388608)"),
            "{err}"
        );
    }
}
