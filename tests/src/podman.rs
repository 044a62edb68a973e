//! podman in a [`Testbed`], for end-to-end tests of nsbypass installed the
//! podman way (an OCI hooks directory, `--annotation`).
//!
//! Every podman runs as
//!
//! ```text
//! nsenter --net=/run/netns/<tag>-h podman --root <dir>/podman/root
//!     --runroot <dir>/podman/runroot --tmpdir <dir>/podman/tmp
//!     --storage-driver vfs --runtime runc --cgroup-manager cgroupfs
//!     --events-backend file ...
//! ```
//!
//! with `CONTAINERS_CONF=<dir>/podman/containers.conf` and
//! `CONTAINERS_STORAGE_CONF=<dir>/podman/storage.conf` in its environment,
//! so podman, conmon, runc and the hooks all take the testbed's host netns
//! for the machine's, as with plain runc, and podman's state stays in the
//! testbed:
//!
//! - `containers.conf` sets `lock_type = "file"` (locks in `<tmpdir>/locks`).
//!   podman's default shm lock segment `/dev/shm/libpod_lock` is shared by
//!   every podman on the machine, and a fresh runroot makes podman "refresh",
//!   which frees all locks in it, those of other testbeds' live containers
//!   included. podman hands `CONTAINERS_CONF` on to conmon and so to the
//!   `podman container cleanup` conmon runs when a container exits.
//! - `containers.conf` also makes the default hooks directory the empty
//!   `<dir>/podman/hooks.d`, so a hooks directory installed on the machine
//!   (`/usr/share/containers/oci/hooks.d`) never joins in; a test chooses its
//!   own with [`PodmanRun::hooks_dir`] (`--hooks-dir`, which replaces it).
//! - `vfs` makes no mounts for a `--rootfs` container; the only mount podman
//!   makes in the machine's mount namespace is the container's `/dev/shm`
//!   tmpfs in its `userdata` directory, which `podman rm` unmounts.
//!
//! What stays outside: runc's state in the machine's `/run/runc/<64-hex id>`
//! (podman passes runc no `--root`; runc's `--root` through `--runtime-flag`
//! is not used on delete, which then leaks the container) and cgroups under
//! `/libpod_parent` (cgroupfs manager, v1). A container's directory is
//! `<dir>/podman/root/vfs-containers/<id>/userdata` (config.json, the shm
//! mount, `ctr.log`).

use crate::cmd;
use crate::procs;
use crate::testbed::Testbed;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Arguments every `podman run` gets. `--network none`: there is no
/// netavark/CNI here, and nsbypass is to give the container its network.
/// The ulimits, because podman's defaults (the machine's hard limits) make
/// runc fail on these VMs.
const RUN_DEFAULTS: [&str; 6] = [
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

/// How the testbed runs podman; get one from [`Testbed::podman`]. Cheap to
/// clone: only paths.
#[derive(Clone, Debug)]
pub struct Podman {
    /// `/run/netns/<tag>-h`.
    host_netns: PathBuf,
    /// `<dir>/podman`: podman's configuration, storage and temporary files.
    dir: PathBuf,
    /// The testbed directory, for [`cmd::output`]'s capture files.
    scratch: PathBuf,
    /// The testbed's shared rootfs, the default of [`PodmanRun::rootfs`].
    rootfs: PathBuf,
}

impl Testbed {
    /// podman for this testbed: runs in the host netns with all its state
    /// under `<dir>/podman` (see [`Podman`]). Dropping the testbed removes
    /// every podman container left (running the poststop hooks) and what
    /// podman mounted. podman and its hooks see the machine's cgroups, also
    /// in a [`Testbed::new_cgroup2`] testbed.
    pub fn podman(&self) -> Podman {
        Podman {
            host_netns: Path::new("/run/netns").join(&self.host_ns),
            dir: self.dir.join("podman"),
            scratch: self.dir.clone(),
            rootfs: self.rootfs(),
        }
    }
}

impl Podman {
    /// `<dir>/podman`, the directory holding all of this podman's state:
    /// `root/` (`--root`), `runroot/`, `tmp/` (`--tmpdir`, with `locks/`,
    /// `exits/` and `events/`) and the config files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `nsenter --net=<host netns> podman <testbed options> <args>` and
    /// returns its output whatever its exit status. The hooks directory is
    /// not set: pass `--hooks-dir DIR` in `args` (after `run` is fine: it is
    /// a global option, and cobra takes those anywhere).
    pub fn command(&self, args: &[&str]) -> Result<Output> {
        self.prepare()?;
        let mut c = cmd::command("nsenter");
        c.arg(format!("--net={}", self.host_netns.display()))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(["--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        cmd::output(c, &self.scratch)
    }

    /// Like [`Podman::command`], but fails unless podman succeeds (the error
    /// carries podman's stderr); returns its stdout.
    pub fn command_ok(&self, args: &[&str]) -> Result<String> {
        cmd::check(self.command(args)?, &format!("podman {}", args.join(" ")))
    }

    /// Starts describing a `podman run -d`.
    pub fn run(&self) -> PodmanRun {
        PodmanRun {
            podman: self.clone(),
            name: None,
            options: Vec::new(),
            rootfs: self.rootfs.clone(),
            extra: Vec::new(),
            cmd: vec!["sleep".into(), "3600".into()],
        }
    }

    /// Writes the config files and the empty default hooks directory (see
    /// the module docs) unless they exist. Each file is written under a
    /// temporary name and renamed into place, so a podman started by another
    /// thread never reads half a file.
    fn prepare(&self) -> Result<()> {
        let conf = self.dir.join("containers.conf");
        if conf.exists() {
            return Ok(());
        }
        let hooks = self.dir.join("hooks.d");
        let tmp = self.dir.join("tmp");
        for d in [&hooks, &tmp] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            self.dir.join("root"),
            self.dir.join("runroot"),
        );
        write_atomically(&self.dir.join("storage.conf"), &storage)?;
        let containers = format!(
            "[engine]\n\
             lock_type = \"file\"\n\
             hooks_dir = [{:?}]\n\
             tmp_dir = {tmp:?}\n\
             image_copy_tmp_dir = {tmp:?}\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"runc\"\n\
             \n\
             [network]\n\
             network_config_dir = {:?}\n",
            hooks,
            self.dir.join("networks"),
        );
        // Last: its presence says the rest is in place.
        write_atomically(&conf, &containers)
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Describes a `podman run -d`; get one from [`Podman::run`]. By default it
/// runs `sleep 3600` from the testbed's shared rootfs (`--rootfs`; podman
/// creates mount point files such as `/etc/hosts` in it) with `--network
/// none`, the ulimits these VMs need, no annotations and only the empty
/// default hooks directory.
pub struct PodmanRun {
    podman: Podman,
    name: Option<String>,
    /// Options in the order given, before [`PodmanRun::arg`]'s.
    options: Vec<String>,
    rootfs: PathBuf,
    extra: Vec<String>,
    cmd: Vec<String>,
}

/// What `podman run -d` made of a [`PodmanRun`].
enum Launch {
    Started(PodmanContainer),
    /// podman failed; its stderr (which quotes a failing prestart hook's).
    Refused(String),
}

impl PodmanRun {
    /// The container's name (`--name`), unique within the testbed; by
    /// default `c<n>` with a per-process counter.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// `--annotation key=value`: podman copies it into config.json's
    /// annotations, next to its own (`io.container.manager=libpod`,
    /// `io.podman.annotations.*`, ...), where hooks.d `when.annotations`
    /// matches and the hook reads it.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.options.push("--annotation".into());
        self.options.push(format!("{key}={value}"));
        self
    }

    /// `--env KEY=VALUE` for the container's process.
    pub fn env(mut self, key_eq_value: &str) -> Self {
        self.options.push("--env".into());
        self.options.push(key_eq_value.to_owned());
        self
    }

    /// `--device SPEC` (`/dev/x[:/dev/y][:rwm]`).
    pub fn device(mut self, spec: &str) -> Self {
        self.options.push("--device".into());
        self.options.push(spec.to_owned());
        self
    }

    /// `--hooks-dir DIR`: the OCI hooks directory (`*.json` hook
    /// descriptions) instead of the testbed's empty default. Given more than
    /// once, all of them are read.
    pub fn hooks_dir(mut self, dir: &Path) -> Self {
        self.options.push("--hooks-dir".into());
        self.options.push(dir.to_string_lossy().into_owned());
        self
    }

    /// Runs from `dir` (`--rootfs`) instead of the testbed's shared rootfs,
    /// e.g. one from [`Testbed::new_rootfs_with`].
    pub fn rootfs(mut self, dir: &Path) -> Self {
        self.rootfs = dir.to_path_buf();
        self
    }

    /// Any other `podman run` option, after the builder's (so, for a
    /// single-valued option such as `--network`, it wins).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Several [`PodmanRun::arg`]s.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The container's command, instead of `sleep 3600`.
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = argv.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Runs `podman run -d`, which runs the createRuntime/prestart hooks
    /// through runc, and returns the running container. When podman fails,
    /// the error carries its stderr (a failing hook's stderr is quoted in
    /// it) and the container podman leaves behind in state "created" is
    /// removed.
    pub fn start(self) -> Result<PodmanContainer> {
        let name = self.name.clone();
        match self.launch()? {
            Launch::Started(c) => Ok(c),
            Launch::Refused(stderr) => Err(anyhow!(
                "podman run {} failed: {}",
                name.as_deref().unwrap_or(""),
                stderr.trim()
            )),
        }
    }

    /// Runs `podman run -d` expecting it to fail (e.g. a prestart hook
    /// refuses) and returns podman's stderr. Leaves no container behind.
    /// Panics if the container started (after removing it) or the harness
    /// itself failed.
    pub fn start_err(self) -> String {
        match self.launch() {
            Ok(Launch::Refused(stderr)) => stderr,
            Ok(Launch::Started(c)) => {
                let name = c.name.clone();
                drop(c);
                panic!("expected `podman run` of {name} to fail, but it started");
            }
            Err(e) => panic!("could not try to run a podman container: {e:#}"),
        }
    }

    fn launch(self) -> Result<Launch> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = self
            .name
            .unwrap_or_else(|| format!("c{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &name];
        args.extend(RUN_DEFAULTS);
        args.extend(self.options.iter().map(String::as_str));
        args.extend(self.extra.iter().map(String::as_str));
        args.extend(["--rootfs", &rootfs]);
        args.extend(self.cmd.iter().map(String::as_str));

        let out = self.podman.command(&args)?;
        if !out.status.success() {
            // podman leaves a container that failed to start "created".
            remove_quietly(&self.podman, &name);
            return Ok(Launch::Refused(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // Dropping it from here on removes the container.
        let mut c = PodmanContainer {
            name,
            id,
            pid: 0,
            bundle: PathBuf::new(),
            podman: self.podman,
            live: true,
        };
        let inspect = c
            .podman
            .command_ok(&[
                "inspect",
                "--format",
                "{{.State.Pid}}\t{{.OCIConfigPath}}",
                &c.name,
            ])
            .with_context(|| format!("inspecting podman container {}", c.name))?;
        let (pid, config) = inspect
            .trim()
            .split_once('\t')
            .with_context(|| format!("odd `podman inspect` output: {inspect:?}"))?;
        c.pid = pid
            .parse()
            .with_context(|| format!("pid {pid:?} from podman inspect"))?;
        c.bundle = Path::new(config)
            .parent()
            .with_context(|| format!("config path {config:?} from podman inspect"))?
            .to_path_buf();
        Ok(Launch::Started(c))
    }
}

/// `podman rm -f -t 0 <name>` for clean-up paths that must not fail;
/// reports on stderr unless the container is already gone.
fn remove_quietly(podman: &Podman, name: &str) {
    match podman.command(&["rm", "-f", "-t", "0", name]) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("no such container") {
                eprintln!("testbed: podman rm -f {name}: {}", stderr.trim());
            }
        }
        Err(e) => eprintln!("testbed: podman rm -f {name}: {e:#}"),
    }
}

/// A container `podman run -d` started. Dropping it runs `podman rm -f`
/// (poststop hooks included) unless [`PodmanContainer::rm`] already did.
#[derive(Debug)]
pub struct PodmanContainer {
    /// `--name`.
    pub name: String,
    /// podman's 64-hex id: the OCI container id runc and the hooks see.
    pub id: String,
    /// The container's init as the machine sees it (`/proc/<pid>/ns/net` is
    /// its netns); 0 if its command had already exited at start.
    pub pid: u32,
    /// podman's bundle directory, `<dir>/podman/root/vfs-containers/<id>/userdata`:
    /// `config.json` (what runc got), `ctr.log`, the `/dev/shm` mount.
    pub bundle: PathBuf,
    podman: Podman,
    /// False once removed, so Drop does not remove it (or a namesake) again.
    live: bool,
}

impl PodmanContainer {
    /// `podman exec <name> <argv>`; the output whatever its exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(argv);
        self.podman.command(&args)
    }

    /// Like [`PodmanContainer::exec`], but fails unless the command
    /// succeeds; returns its stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.exec(argv)?,
            &format!("{} in podman container {}", argv.join(" "), self.name),
        )
    }

    /// Runs a host tool (e.g. iproute2's `ip -j addr`) in the container's
    /// network namespace only: `nsenter --net=/proc/<pid>/ns/net <argv>`.
    /// The output whatever the exit status.
    pub fn netns_exec(&self, argv: &[&str]) -> Result<Output> {
        if self.pid == 0 {
            bail!(
                "podman container {} had exited at start: no netns",
                self.name
            );
        }
        let mut c = cmd::command("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg("--")
            .args(argv);
        cmd::output(c, &self.podman.scratch)
    }

    /// Like [`PodmanContainer::netns_exec`], but fails unless the command
    /// succeeds; returns its stdout.
    pub fn netns_exec_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.netns_exec(argv)?,
            &format!("{} in the netns of {}", argv.join(" "), self.name),
        )
    }

    /// The OCI config.json podman generated and runc ran the container from,
    /// with the hooks podman put there (prestart, createRuntime, ...: not
    /// poststop, which podman runs itself).
    pub fn bundle_config(&self) -> Result<Value> {
        let path = self.bundle.join("config.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// `podman logs <name>`: what the container's process wrote.
    pub fn logs(&self) -> Result<Output> {
        self.podman.command(&["logs", &self.name])
    }

    /// `podman rm -f -t 0 <name>`: kills the container at once and removes
    /// it, running the poststop hooks. Returns the output; errs only if the
    /// harness could not run podman.
    ///
    /// podman, not runc, runs poststop hooks: in whichever podman process
    /// cleans up first after the container dies, this one or the `podman
    /// container cleanup` conmon starts. Either way they have finished when
    /// this returns, but a failing one shows up here only if this process
    /// ran it, and then only as a `level=warning ... poststop hook 0: ...
    /// exit status N` line (the hook's stderr only at `--log-level debug`).
    /// Check a poststop hook by its effects instead.
    pub fn rm(mut self) -> Result<Output> {
        let out = self.podman.command(&["rm", "-f", "-t", "0", &self.name])?;
        self.live = !out.status.success();
        Ok(out)
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        if self.live && self.podman.dir.exists() {
            remove_quietly(&self.podman, &self.name);
        }
    }
}

/// The testbed's podman clean-up, before its netns go (poststop hooks run
/// in the host netns): removes every container left, ends conmon or `podman
/// container cleanup` processes that linger, then unmounts what podman left
/// mounted under `<dir>/podman`.
pub(crate) fn cleanup(tb: &Testbed) {
    let podman = tb.podman();
    if !podman.dir.join("containers.conf").exists() {
        return;
    }
    match podman.command(&["rm", "-af", "-t", "0"]) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "testbed {}: podman rm -af: {}",
            tb.tag,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("testbed {}: podman rm -af: {e:#}", tb.tag),
    }
    let needle = format!("{}/", podman.dir.display());
    procs::end_stragglers(&needle, Duration::from_secs(5), "podman");
    if let Err(e) = procs::unmount_under(&podman.dir) {
        eprintln!("testbed {}: {e:#}", tb.tag);
    }
}

#[cfg(test)]
mod tests {
    //! Checks of the podman harness, without nsbypass.

    use super::*;
    use crate::{require_tools, skip_unless_root};
    use std::os::unix::fs::PermissionsExt;

    /// Skips without root or podman (printing why); true means "return now".
    fn skip() -> bool {
        if skip_unless_root() {
            return true;
        }
        require_tools();
        if cmd::which("podman").is_none() {
            eprintln!("skipping: no podman (apt-get install -y podman)");
            return true;
        }
        false
    }

    fn link_names(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.split(": ").nth(1)).collect()
    }

    #[test]
    fn podman_runs_the_shared_rootfs_in_the_testbed() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let podman = tb.podman();
        let info = podman.command_ok(&[
            "info",
            "--format",
            "{{.Store.GraphRoot}} {{.Store.RunRoot}} {{.Store.GraphDriverName}}",
        ])?;
        let want = format!(
            "{} {} vfs",
            podman.dir().join("root").display(),
            podman.dir().join("runroot").display()
        );
        assert_eq!(info.trim(), want);

        let c = podman
            .run()
            .name("plain")
            .annotation("example.com/note", "hi")
            .env("GREETING=hello")
            .cmd(&["sleep", "3600"])
            .start()?;
        assert!(c.pid > 0 && procs::alive(c.pid), "pid {}", c.pid);
        assert_eq!(c.exec_ok(&["sh", "-c", "echo $GREETING"])?, "hello\n");
        let links = c.netns_exec_ok(&["ip", "-o", "link", "show"])?;
        assert_eq!(link_names(&links), ["lo"], "links: {links}");

        let config = c.bundle_config()?;
        assert_eq!(config["annotations"]["example.com/note"], "hi");
        assert_eq!(config["root"]["path"], tb.rootfs().to_str().unwrap());
        assert!(c.bundle.starts_with(podman.dir()), "{}", c.bundle.display());
        let ps = podman.command_ok(&["ps", "--format", "{{.Names}}"])?;
        assert_eq!(ps.trim(), "plain");

        let pid = c.pid;
        let removed = c.rm()?;
        assert!(removed.status.success(), "podman rm: {removed:?}");
        assert!(!procs::alive(pid), "container init {pid} lives");
        let ps = podman.command_ok(&["ps", "-a", "--format", "{{.Names}}"])?;
        assert_eq!(ps.trim(), "");
        assert!(procs::mounts_under(&tb.dir)?.is_empty());
        Ok(())
    }

    /// Hooks from `--hooks-dir` run in the host netns: prestart through
    /// runc, poststop by podman at removal; a failing prestart fails
    /// `start_err` with the hook's stderr and leaves no container.
    #[test]
    fn podman_hooks_run_in_the_host_netns() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let podman = tb.podman();
        let hooks = tb.dir.join("hooks.d");
        std::fs::create_dir(&hooks)?;
        let record = tb.dir.join("hook-calls");
        let script = tb.dir.join("record-hook");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1 $(readlink /proc/self/ns/net)\" >> {}\n\
                 [ \"$1\" != refuse ] || {{ echo 'fake-hook: no network for you' >&2; exit 3; }}\n",
                record.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        for (file, arg, stages) in [
            ("a.json", "prestart", r#"["prestart"]"#),
            ("b.json", "poststop", r#"["poststop"]"#),
        ] {
            let hook = format!(
                r#"{{"version":"1.0.0","hook":{{"path":{:?},"args":["record-hook",{arg:?}]}},
                   "when":{{"annotations":{{"^example.com/net$":"^yes$"}}}},"stages":{stages}}}"#,
                script
            );
            std::fs::write(hooks.join(file), hook)?;
        }

        // Without the annotation, no hook runs.
        let plain = podman.run().hooks_dir(&hooks).start()?;
        plain.rm()?;
        assert!(!record.exists(), "a hook ran for an unannotated container");

        let c = podman
            .run()
            .hooks_dir(&hooks)
            .annotation("example.com/net", "yes")
            .start()?;
        let config = c.bundle_config()?;
        assert!(
            config["hooks"]["prestart"].is_array(),
            "{}",
            config["hooks"]
        );
        assert!(config["hooks"]["poststop"].is_null(), "{}", config["hooks"]);
        let removed = c.rm()?;
        assert!(removed.status.success(), "podman rm: {removed:?}");
        let host_ns = std::fs::metadata(format!("/run/netns/{}", tb.host_ns))?;
        let ino = std::os::unix::fs::MetadataExt::ino(&host_ns);
        assert_eq!(
            std::fs::read_to_string(&record)?,
            format!("prestart net:[{ino}]\npoststop net:[{ino}]\n")
        );

        std::fs::write(
            hooks.join("a.json"),
            format!(
                r#"{{"version":"1.0.0","hook":{{"path":{script:?},"args":["record-hook","refuse"]}},
                   "when":{{"always":true}},"stages":["prestart"]}}"#
            ),
        )?;
        let err = podman.run().name("refused").hooks_dir(&hooks).start_err();
        assert!(
            err.contains("fake-hook: no network for you"),
            "podman said: {err}"
        );
        let ps = podman.command_ok(&["ps", "-a", "--format", "{{.Names}}"])?;
        assert_eq!(ps.trim(), "");
        Ok(())
    }

    /// The testbed's Drop removes podman containers the test left and leaves
    /// no process, mount or directory.
    #[test]
    fn testbed_drop_removes_podman_containers() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let c = tb.podman().run().start()?;
        let (pid, dir) = (c.pid, tb.dir.clone());
        std::mem::forget(c);
        let conmons = procs::pids_mentioning(&format!("{}/", dir.display()));
        assert!(!conmons.is_empty(), "no conmon found");
        drop(tb);
        assert!(!procs::alive(pid), "container init {pid} lives");
        for p in conmons {
            assert!(!procs::alive(p), "pid {p} lives");
        }
        assert!(procs::mounts_under(&dir)?.is_empty());
        assert!(!dir.exists(), "{} is left", dir.display());
        Ok(())
    }
}
