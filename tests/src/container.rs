//! runc containers in a [`Testbed`]: [`ContainerBuilder`] writes the bundle
//! and runs `runc create`; [`Container`] is the created container.

use crate::cmd;
use crate::runc::Runc;
use crate::testbed::Testbed;
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment every hook entry gets. Always set explicitly: with no
/// `env`, runc hands the hook runc's own environment (the test's), which
/// would make results depend on who runs the tests.
pub const HOOK_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Seconds runc lets a hook run before killing it, so a hung hook fails its
/// test with runc's message instead of stalling the suite.
pub const HOOK_TIMEOUT_SECS: u64 = 30;

/// An OCI edit supplied by a test, applied after all others.
type SpecEdit<'a> = Box<dyn FnOnce(&mut Value) + 'a>;

/// Describes a container to create in a [`Testbed`]; get one from
/// [`Testbed::container`]. By default it runs `sleep 3600` from the
/// testbed's shared read-only rootfs in a new network namespace, with no
/// hooks and no annotations, like a container nsbypass is not asked about.
pub struct ContainerBuilder<'a> {
    tb: &'a Testbed,
    id: String,
    args: Vec<String>,
    env: Vec<String>,
    annotations: serde_json::Map<String, Value>,
    netns: Option<String>,
    hooks: Vec<(String, Value)>,
    hook_env: Vec<String>,
    rootfs: Option<PathBuf>,
    edits: Vec<SpecEdit<'a>>,
    /// A program runc's create goes through (nsbypass's runtime mode).
    via: Option<Vec<std::ffi::OsString>>,
}

/// What `runc create` made of a bundle.
enum Launch {
    Created(Container),
    /// runc failed; its stderr (which quotes a failing hook's stderr).
    Refused(String),
}

impl<'a> ContainerBuilder<'a> {
    pub(crate) fn new(tb: &'a Testbed, id: &str) -> Self {
        ContainerBuilder {
            tb,
            id: id.to_owned(),
            args: vec!["sleep".into(), "3600".into()],
            env: Vec::new(),
            annotations: serde_json::Map::new(),
            netns: None,
            hooks: Vec::new(),
            hook_env: Vec::new(),
            rootfs: None,
            edits: Vec::new(),
            via: None,
        }
    }

    /// Creates the container through nsbypass's docker runtime mode
    /// (`nsbypass --config CONFIG runtime --runtime runc -- <runc args>`),
    /// as dockerd's runtime entry does, instead of runc itself.
    pub fn through_runtime_mode(mut self, nsbypass_bin: &Path, config: &Path) -> Self {
        self.via = Some(
            [
                nsbypass_bin.as_os_str(),
                "--config".as_ref(),
                config.as_os_str(),
                "runtime".as_ref(),
                "--runtime".as_ref(),
                "runc".as_ref(),
                "--".as_ref(),
            ]
            .map(ToOwned::to_owned)
            .to_vec(),
        );
        self
    }

    /// Adds an annotation, the channel through which a container asks
    /// nsbypass for a network (e.g. `nsbypass.io/network=fast`).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.into());
        self
    }

    /// Adds `KEY=VALUE` to the container process's environment.
    pub fn env(mut self, key_eq_value: &str) -> Self {
        self.env.push(key_eq_value.to_owned());
        self
    }

    /// The container's command, instead of `sleep 3600`.
    pub fn args(mut self, argv: &[&str]) -> Self {
        self.args = argv.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Joins `other`'s network namespace instead of getting a new one, as the
    /// containers of a pod do; the hook then sees a netns it may already have
    /// wired.
    pub fn join_netns_of(self, other: &Container) -> Self {
        self.netns_path(&format!("/proc/{}/ns/net", other.pid))
    }

    /// Uses the network namespace at `path` instead of a new one.
    pub fn netns_path(mut self, path: &str) -> Self {
        self.netns = Some(path.to_owned());
        self
    }

    /// Has runc run `nsbypass_bin --config <config> hook <stage>` at each of
    /// `stages` (`prestart`, `createRuntime`, `poststop`, ...), the way an
    /// admin would install nsbypass, with [`HOOK_ENV`] and
    /// [`HOOK_TIMEOUT_SECS`].
    pub fn hooks(mut self, nsbypass_bin: &Path, config: &Path, stages: &[&str]) -> Self {
        for stage in stages {
            let hook = json!({
                "path": nsbypass_bin,
                "args": ["nsbypass", "--config", config, "hook", stage],
                "env": [HOOK_ENV],
                "timeout": HOOK_TIMEOUT_SECS,
            });
            self.hooks.push(((*stage).to_owned(), hook));
        }
        self
    }

    /// Adds `KEY=VALUE` to the environment of every hook entry
    /// [`ContainerBuilder::hooks`] adds (before or after this call), after
    /// [`HOOK_ENV`]; the container's own environment is not affected. E.g.
    /// `NSBYPASS_FAILPOINT=lease=error` makes an nsbypass built with the
    /// `failpoints` feature fail at that step.
    pub fn hook_env(mut self, key_eq_value: &str) -> Self {
        self.hook_env.push(key_eq_value.to_owned());
        self
    }

    /// Uses `dir` as a private, writable rootfs instead of the testbed's
    /// shared read-only one (see [`Testbed::new_rootfs`]).
    pub fn rootfs(mut self, dir: PathBuf) -> Self {
        self.rootfs = Some(dir);
        self
    }

    /// Changes the generated `config.json` in any other way; runs last, so it
    /// sees (and may undo) everything the builder set.
    pub fn edit_spec(mut self, f: impl FnOnce(&mut Value) + 'a) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// Writes the bundle and runs `runc create`, which runs the
    /// prestart/createRuntime hooks; the container is then "created" (its
    /// init waits for [`Container::start`]). When runc fails, the error
    /// carries runc's stderr, which quotes a failing hook's stderr.
    pub fn create(self) -> Result<Container> {
        let id = self.id.clone();
        match self.launch()? {
            Launch::Created(c) => Ok(c),
            Launch::Refused(stderr) => Err(anyhow!("runc create {id} failed: {}", stderr.trim())),
        }
    }

    /// Runs `runc create` expecting it to fail (e.g. a hook refuses the
    /// container) and returns runc's stderr, so the test can assert the
    /// hook's message. Panics if the container was created (after deleting
    /// it) or the harness itself failed. Leaves no container behind.
    pub fn create_err(self) -> String {
        let id = self.id.clone();
        match self.launch() {
            Ok(Launch::Refused(stderr)) => stderr,
            Ok(Launch::Created(c)) => {
                drop(c);
                panic!("expected `runc create {id}` to fail, but it succeeded");
            }
            Err(e) => panic!("could not try to create container {id}: {e:#}"),
        }
    }

    fn launch(self) -> Result<Launch> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let runc = self.tb.runc().clone();
        let id = self.id.clone();
        // A fresh bundle per create, so a test may reuse an id after deleting.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let bundle = self.tb.dir.join("bundles").join(format!("{id}-{seq}"));
        fs::create_dir(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
        let via = self.via.clone();
        self.write_spec(&bundle)?;

        // runc passes its stdio on to the container's process, so these are
        // files, not pipes: a pipe would stay open as long as the container.
        let (stdout, stderr) = (bundle.join("stdout"), bundle.join("stderr"));
        let bundle_arg = bundle.to_string_lossy();
        let create_args = ["create", "--bundle", &bundle_arg, &id];
        let mut create = match &via {
            Some(wrapper) => runc.command_via(wrapper, &create_args),
            None => runc.command(&create_args),
        };
        let status = cmd::run_to_files(&mut create, &stdout, &stderr)?;
        if !status.success() {
            let text = fs::read_to_string(&stderr)
                .with_context(|| format!("reading {}", stderr.display()))?;
            // runc normally destroys what it made; make sure.
            runc.force_delete(&id);
            return Ok(Launch::Refused(text));
        }

        // Dropping it from here on deletes the container.
        let mut c = Container {
            id,
            pid: 0,
            bundle,
            runc,
            live: true,
        };
        let state = c.runc.wait_for_status(&c.id, "created")?;
        c.pid = state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("no pid in runc state of {}: {state}", c.id))?;
        Ok(Launch::Created(c))
    }

    /// Writes `<bundle>/config.json`: runc's default spec with this builder's
    /// settings.
    fn write_spec(self, bundle: &Path) -> Result<()> {
        let bundle_arg = bundle.to_string_lossy();
        let mut spec_cmd = cmd::command("runc");
        spec_cmd.args(["spec", "--bundle", &bundle_arg]);
        cmd::check(cmd::output(spec_cmd, bundle)?, "runc spec")?;
        let path = bundle.join("config.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut spec: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;

        let process = &mut spec["process"];
        process["terminal"] = false.into();
        process["args"] = json!(self.args);
        array(&mut process["env"])?.extend(self.env.into_iter().map(Value::from));
        // Lets `ping` work inside (busybox ping needs a raw socket); runc's
        // default grants only AUDIT_WRITE, KILL and NET_BIND_SERVICE.
        for set in ["bounding", "effective", "permitted", "ambient"] {
            array(&mut process["capabilities"][set])?.push("CAP_NET_RAW".into());
        }

        let shared = self.rootfs.is_none();
        let rootfs = self.rootfs.unwrap_or_else(|| self.tb.rootfs());
        spec["root"] = json!({ "path": rootfs, "readonly": shared });
        spec["annotations"] = Value::Object(self.annotations);
        // runc's default cgroup path is the bare id, which every runc root
        // shares; prefixing the tag lets testbeds use the same ids at once.
        // Relative, so it stays below the cgroups the tests run in; runc
        // removes it at delete.
        spec["linux"]["cgroupsPath"] = format!("{}-{}", self.tb.tag, self.id).into();
        if let Some(netns) = self.netns {
            let namespaces = array(&mut spec["linux"]["namespaces"])?;
            let network = namespaces
                .iter_mut()
                .find(|ns| ns["type"] == "network")
                .context("runc's default spec has no network namespace")?;
            network["path"] = netns.into();
        }
        for (stage, mut hook) in self.hooks {
            array(&mut hook["env"])?.extend(self.hook_env.iter().cloned().map(Value::from));
            array(&mut spec["hooks"][stage.as_str()])?.push(hook);
        }
        for edit in self.edits {
            edit(&mut spec);
        }

        let text = serde_json::to_string_pretty(&spec).context("serializing config.json")?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// `v` as a JSON array, made one if it is absent.
fn array(v: &mut Value) -> Result<&mut Vec<Value>> {
    if v.is_null() {
        *v = json!([]);
    }
    match v {
        Value::Array(items) => Ok(items),
        other => Err(anyhow!(
            "expected a JSON array in config.json, found {other}"
        )),
    }
}

/// A container runc has created in a [`Testbed`]. Dropping it runs `runc
/// delete --force` (which runs poststop hooks) unless
/// [`Container::kill_and_delete`] already deleted it.
#[derive(Debug)]
pub struct Container {
    /// The container id (runc's, and the one nsbypass sees).
    pub id: String,
    /// The container's init as the machine sees it: `/proc/<pid>/ns/net` is
    /// its network namespace.
    pub pid: u32,
    /// The bundle directory: `config.json`, and `stdout`/`stderr` of runc and
    /// the container's process.
    pub bundle: PathBuf,
    runc: Runc,
    /// False once deleted, so Drop does not delete it (or a namesake) again.
    live: bool,
}

impl Container {
    /// `runc start`: runs the container's process (and poststart hooks).
    pub fn start(&self) -> Result<()> {
        self.runc.ok(&["start", &self.id]).map(drop)
    }

    /// Runs `argv` inside the container (`runc exec`, no tty) and returns its
    /// output whatever its exit status. Works on a created, not yet started
    /// container too.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", self.id.as_str()];
        args.extend_from_slice(argv);
        self.runc.output(&args)
    }

    /// Like [`Container::exec`], but fails unless the command succeeds;
    /// returns its stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.exec(argv)?,
            &format!("{} in container {}", argv.join(" "), self.id),
        )
    }

    /// Runs a host tool (e.g. iproute2's `ip -j addr`, richer than busybox's)
    /// in the container's network namespace only:
    /// `nsenter --net=/proc/<pid>/ns/net <argv>`. Returns the output whatever
    /// the exit status.
    pub fn netns_exec(&self, argv: &[&str]) -> Result<Output> {
        let mut c = cmd::command("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg("--")
            .args(argv);
        cmd::output(c, &self.bundle)
    }

    /// Like [`Container::netns_exec`], but fails unless the command succeeds;
    /// returns its stdout.
    pub fn netns_exec_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.netns_exec(argv)?,
            &format!("{} in the netns of {}", argv.join(" "), self.id),
        )
    }

    /// The inode of the container's network namespace: equal for containers
    /// that share one.
    pub fn netns_inode(&self) -> Result<u64> {
        let path = format!("/proc/{}/ns/net", self.pid);
        Ok(fs::metadata(&path)
            .with_context(|| format!("stat {path}"))?
            .ino())
    }

    /// runc's status of the container: "created", "running", "stopped", ...
    pub fn status(&self) -> Result<String> {
        let state = self.runc.state(&self.id)?;
        state["status"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no status in runc state of {}: {state}", self.id))
    }

    /// What the container's process wrote to stdout so far.
    pub fn stdout(&self) -> Result<String> {
        let path = self.bundle.join("stdout");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// What runc's create and the container's process wrote to stderr so far.
    pub fn stderr(&self) -> Result<String> {
        let path = self.bundle.join("stderr");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Kills the container's processes, waits until runc reports it stopped
    /// and runs `runc delete` (which runs poststop hooks). Returns delete's
    /// output, so a test can see a failing poststop hook: runc 1.1.5 still
    /// exits 0 then, but its stderr has a `level=error` line quoting the
    /// hook's stderr. Errs only if the harness could not get that far.
    pub fn kill_and_delete(mut self) -> Result<Output> {
        if self.status()? != "stopped" {
            self.runc.ok(&["kill", &self.id, "KILL"])?;
            self.runc.wait_for_status(&self.id, "stopped")?;
        }
        let out = self.runc.output(&["delete", &self.id])?;
        // runc removes the container's state before running poststop hooks,
        // so even a failed delete leaves nothing to delete, unless it failed
        // before that point; Drop's forced delete covers that case.
        self.live = !out.status.success() && self.runc.state(&self.id).is_ok();
        Ok(out)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.live {
            self.runc.force_delete(&self.id);
        }
    }
}
