//! A private dockerd in a [`Testbed`], for end-to-end tests of nsbypass
//! installed the docker way (a runtime entry in `daemon.json`).
//!
//! dockerd runs as
//!
//! ```text
//! nsenter --net=/run/netns/<tag>-h /usr/sbin/dockerd --config-file <daemon.json>
//!     --data-root <dir>/docker/data --exec-root <dir>/docker/exec
//!     --pidfile <dir>/docker/dockerd.pid -H unix://<dir>/docker/docker.sock
//!     --iptables=false --bridge=none --ip-masq=false --ip-forward=false
//! ```
//!
//! and starts a containerd of its own (`<dir>/docker/exec/containerd/`), so
//! dockerd, containerd, the shims, runc and the hooks take the testbed's host
//! netns for the machine's. The client is always `/usr/bin/docker` (Debian's,
//! matching the daemon; not whatever `docker` comes first in `PATH`), with
//! `DOCKER_CONFIG=<dir>/docker/client`.
//!
//! What stays outside: shim sockets in `/run/containerd/s/` (removed when a
//! shim exits), cgroups under `/docker` (v1), and dockerd's trust key
//! `/etc/docker/key.json` unless `daemon.json` sets `deprecated-key-path`,
//! which [`Testbed::write_daemon_json`] does.
//!
//! dockerd makes these mounts in the machine's mount namespace, all under
//! `<dir>/docker`: its data root bind-mounted onto itself, each container's
//! overlay `merged` dir and the bind mount of its netns in
//! `exec/netns/<sandbox>` (dockerd makes every container's netns, `--network
//! none` too, through its `libnetwork-setkey` prestart hook).

use crate::cmd;
use crate::procs;
use crate::testbed::Testbed;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Debian's docker.io daemon.
const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's docker.io client, of the daemon's version.
const DOCKER: &str = "/usr/bin/docker";
/// If this socket exists, dockerd uses that (the machine's) containerd
/// instead of starting its own.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";
/// Where dockerd keeps its trust key unless `deprecated-key-path` says
/// otherwise; it creates the file if it is missing.
const SYSTEM_TRUST_KEY: &str = "/etc/docker/key.json";
/// How long dockerd may take to answer after starting, and to exit (with its
/// containerd) after SIGTERM. Both take about 2 s on an idle VM.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Dockerd::reload`] waits for dockerd to report the reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A unix socket path is at most 107 bytes (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The paths of a testbed's dockerd, all under `<dir>/docker`.
#[derive(Clone, Debug)]
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(tb: &Testbed) -> Layout {
        Layout {
            root: tb.dir.join("docker"),
        }
    }
    fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }
    fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }
    fn exec_root(&self) -> PathBuf {
        self.root.join("exec")
    }
    fn pidfile(&self) -> PathBuf {
        self.root.join("dockerd.pid")
    }
    fn log(&self) -> PathBuf {
        self.root.join("dockerd.log")
    }
    /// Written by dockerd's containerd supervisor.
    fn containerd_pidfile(&self) -> PathBuf {
        self.exec_root().join("containerd/containerd.pid")
    }
    /// The longest socket path below the exec root.
    fn longest_socket(&self) -> PathBuf {
        self.exec_root().join("containerd/containerd.sock.ttrpc")
    }
    /// Found in the command line of dockerd, its containerd and the shims.
    fn needle(&self) -> String {
        format!("{}/", self.root.display())
    }
}

/// A dockerd running in a [`Testbed`]; get one from [`Testbed::dockerd`].
/// Dropping it removes all its containers (running their poststop hooks),
/// stops dockerd and its containerd, unmounts what they left and removes
/// `<dir>/docker`, so another can be started. Dropping the testbed first
/// does the same, but for the last step.
#[derive(Debug)]
pub struct Dockerd {
    /// `<dir>/docker`: everything of this dockerd.
    pub root: PathBuf,
    /// The API socket, `<dir>/docker/docker.sock`.
    pub socket: PathBuf,
    /// `--data-root`, `<dir>/docker/data`: images, containers, and the
    /// wrappers dockerd writes for `daemon.json` runtimes that have
    /// `runtimeArgs` (`data/runtimes/<name>`).
    pub data_root: PathBuf,
    /// `--exec-root`, `<dir>/docker/exec`: containerd's state and socket,
    /// runc's root (`exec/runtime-runc/moby`), netns bind mounts.
    pub exec_root: PathBuf,
    /// The `daemon.json` dockerd reads (`--config-file`), again on
    /// [`Dockerd::reload`].
    pub config: PathBuf,
    /// dockerd's pid.
    pub pid: u32,
    layout: Layout,
    /// For [`cmd::output`]'s capture files.
    scratch: PathBuf,
    /// dockerd itself (nsenter execs it), to reap it.
    child: Option<Child>,
}

impl Testbed {
    /// Starts a dockerd of this testbed in its host netns, configured by
    /// `daemon_json` (see [`Dockerd`] for the rest), and waits until `docker
    /// info` answers, about 2 s. One at a time per testbed. Fails, with the
    /// tail of dockerd's log, if it exits or does not answer within 20 s.
    ///
    /// Refuses to start if the machine runs a containerd at
    /// `/run/containerd/containerd.sock` (dockerd would use it instead of
    /// its own), or if `daemon_json` lacks `deprecated-key-path` while
    /// `/etc/docker/key.json` is missing (dockerd would create it); write
    /// the file with [`Testbed::write_daemon_json`] to have it set.
    pub fn dockerd(&self, daemon_json: &Path) -> Result<Dockerd> {
        let layout = Layout::new(self);
        check_docker_tools()?;
        if layout.root.exists() {
            bail!(
                "{} exists: a testbed runs one dockerd at a time; drop the other first",
                layout.root.display()
            );
        }
        if Path::new(SYSTEM_CONTAINERD).exists() {
            bail!(
                "{SYSTEM_CONTAINERD} exists: dockerd would use the machine's containerd \
                 instead of starting its own in the testbed"
            );
        }
        let text = fs::read_to_string(daemon_json)
            .with_context(|| format!("reading {}", daemon_json.display()))?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", daemon_json.display()))?;
        if config.get("deprecated-key-path").is_none() && !Path::new(SYSTEM_TRUST_KEY).exists() {
            bail!(
                "{} has no \"deprecated-key-path\", so dockerd would create \
                 {SYSTEM_TRUST_KEY} on the machine; use Testbed::write_daemon_json",
                daemon_json.display()
            );
        }
        let longest = layout.longest_socket();
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter TMPDIR",
                longest.display()
            );
        }
        fs::create_dir(&layout.root)
            .with_context(|| format!("creating {}", layout.root.display()))?;

        let log = File::create(layout.log())
            .with_context(|| format!("creating {}", layout.log().display()))?;
        let mut c = cmd::command("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("--")
            .arg(DOCKERD)
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(layout.data_root())
            .arg("--exec-root")
            .arg(layout.exec_root())
            .arg("--pidfile")
            .arg(layout.pidfile())
            .arg("-H")
            .arg(format!("unix://{}", layout.socket().display()))
            .args([
                "--iptables=false",
                "--bridge=none",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdout(
                log.try_clone()
                    .context("duplicating the dockerd log file")?,
            )
            .stderr(log);
        let child = c.spawn().with_context(|| format!("starting {c:?}"))?;
        // Dropping it from here on stops dockerd and cleans up.
        let mut d = Dockerd {
            root: layout.root.clone(),
            socket: layout.socket(),
            data_root: layout.data_root(),
            exec_root: layout.exec_root(),
            config: daemon_json.to_path_buf(),
            pid: child.id(),
            layout,
            scratch: self.dir.clone(),
            child: Some(child),
        };
        d.wait_until_ready()?;
        Ok(d)
    }

    /// Writes `config` (a JSON object) to `<dir>/<name>` for
    /// [`Testbed::dockerd`], with `"deprecated-key-path"` pointing to
    /// `<dir>/dockerd-key.json` unless `config` sets it, so that dockerd
    /// keeps its trust key in the testbed. Returns the path; write it again
    /// and call [`Dockerd::reload`] to change the runtimes.
    pub fn write_daemon_json(&self, name: &str, config: &Value) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') {
            bail!("daemon.json name {name:?} must be a plain file name");
        }
        let mut config = config.clone();
        let Some(object) = config.as_object_mut() else {
            bail!("daemon.json must be a JSON object, not {config}");
        };
        object
            .entry("deprecated-key-path")
            .or_insert_with(|| self.dir.join("dockerd-key.json").to_string_lossy().into());
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(&config).context("serializing daemon.json")?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Fails naming what is missing for [`Testbed::dockerd`].
fn check_docker_tools() -> Result<()> {
    let mut missing: Vec<String> = [DOCKERD, DOCKER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .map(str::to_owned)
        .collect();
    missing.extend(
        ["containerd", "containerd-shim-runc-v2", "tar"]
            .into_iter()
            .filter(|t| cmd::which(t).is_none())
            .map(str::to_owned),
    );
    if !missing.is_empty() {
        bail!(
            "missing docker tools: {} (apt-get install -y docker.io)",
            missing.join(", ")
        );
    }
    Ok(())
}

impl Dockerd {
    /// Runs `/usr/bin/docker -H unix://<socket> <args>` and returns its
    /// output whatever its exit status. The client needs no netns: it talks
    /// to the socket.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let mut c = cmd::command(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.root.join("client"));
        cmd::output(c, &self.scratch)
    }

    /// Like [`Dockerd::docker`], but fails unless docker succeeds (the error
    /// carries its stderr); returns its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        cmd::check(self.docker(args)?, &format!("docker {}", args.join(" ")))
    }

    /// Makes the image `name` (e.g. `"busybox"`, `"nb/dyn:1"`) from the
    /// directory `rootfs` (e.g. [`Testbed::rootfs`] or one from
    /// [`Testbed::new_rootfs_with`]): `tar -C rootfs -c .` then `docker
    /// import`. No registry involved.
    pub fn import_rootfs(&self, rootfs: &Path, name: &str) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tarball = self.root.join(format!(
            "import-{}.tar",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut tar = cmd::command("tar");
        tar.arg("-C").arg(rootfs).arg("-cf").arg(&tarball).arg(".");
        let tarred = cmd::output(tar, &self.scratch)
            .and_then(|o| cmd::check(o, &format!("tar of {}", rootfs.display())));
        let imported = tarred.and_then(|_| {
            self.docker_ok(&["import", &tarball.to_string_lossy(), name])
                .with_context(|| format!("importing {} as {name}", rootfs.display()))
        });
        let _ = fs::remove_file(&tarball);
        imported.map(drop)
    }

    /// Sends dockerd SIGHUP, which makes it re-read `daemon.json` (runtimes,
    /// among other things), and waits until its log says it reloaded. Fails
    /// with dockerd's complaint if it logs an error instead (e.g. the file
    /// is not valid JSON; dockerd then keeps its old configuration).
    pub fn reload(&self) -> Result<()> {
        let count = |log: &str, what: &str| log.matches(what).count();
        let before = self.log();
        let (reloads, errors) = (
            count(&before, "Reloaded configuration"),
            count(&before, "level=error"),
        );
        procs::signal(self.pid, Signal::SIGHUP)?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            let log = self.log();
            if count(&log, "Reloaded configuration") > reloads {
                return Ok(());
            }
            if count(&log, "level=error") > errors {
                let new: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("level=error"))
                    .skip(errors)
                    .collect();
                bail!(
                    "dockerd did not reload {}: {}",
                    self.config.display(),
                    new.join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not report a reload within {RELOAD_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// dockerd's log so far (its stdout and stderr; containerd's lines too).
    pub fn log(&self) -> String {
        fs::read(self.layout.log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The pid of `container`'s init as the machine sees it (`docker
    /// inspect`); fails if it does not run.
    pub fn pid_of(&self, container: &str) -> Result<u32> {
        let text = self.docker_ok(&["inspect", "--format", "{{.State.Pid}}", container])?;
        let pid: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("pid {text:?} of docker container {container}"))?;
        if pid == 0 {
            bail!("docker container {container} does not run");
        }
        Ok(pid)
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `docker info` until dockerd answers.
    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for dockerd")? {
                    bail!(
                        "dockerd exited ({status}) before answering; log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
            let out = self.docker(&["info", "--format", "{{.ServerVersion}}"])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer `docker info` within {DAEMON_TIMEOUT:?} ({}); \
                     log tail:\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let mut child = self.child.take();
        let reap = || {
            if let Some(c) = child.as_mut() {
                let _ = c.try_wait();
            }
        };
        stop(&self.layout, &self.scratch, reap);
        if let Some(c) = child.as_mut() {
            // dockerd's main thread shows as a zombie while its other threads
            // still exit, and only then can it be reaped: wait a little.
            let reaped = procs::wait_until(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)) | Err(_))
            });
            if !reaped {
                eprintln!("testbed: dockerd {} could not be reaped", self.pid);
            }
        }
        // Only with nothing mounted below: remove_dir_all would descend into
        // a mount.
        if matches!(procs::mounts_under(&self.root), Ok(m) if m.is_empty()) {
            if let Err(e) = fs::remove_dir_all(&self.root) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("testbed: removing {}: {e}", self.root.display());
                }
            }
        }
    }
}

/// The testbed's dockerd clean-up, before its netns go, for a [`Dockerd`]
/// still alive when the testbed is dropped (e.g. both fields of a struct).
pub(crate) fn cleanup(tb: &Testbed) {
    let layout = Layout::new(tb);
    if layout.root.exists() {
        stop(&layout, &tb.dir, || {});
    }
}

/// Stops the dockerd of `layout` if it runs: removes all its containers
/// (their poststop hooks run now, in the host netns), SIGTERMs dockerd and
/// waits for it and its containerd to exit, SIGKILLs them by pid after
/// [`DAEMON_TIMEOUT`], ends any shim left and unmounts everything under
/// `<dir>/docker`. `reap` runs while waiting (to reap dockerd if it is our
/// child). Reports problems on stderr.
fn stop(layout: &Layout, scratch: &Path, reap: impl FnMut()) {
    let needle = layout.needle();
    let read_pid = |p: PathBuf| -> Option<u32> {
        let pid = fs::read_to_string(p).ok()?.trim().parse().ok()?;
        procs::alive_and_mentions(pid, &needle).then_some(pid)
    };
    let dockerd = read_pid(layout.pidfile());
    // Read before dockerd exits: it removes the pidfile.
    let containerd = read_pid(layout.containerd_pidfile());
    if dockerd.is_some() {
        if let Err(e) = remove_all_containers(layout, scratch) {
            eprintln!("testbed: removing docker containers: {e:#}");
        }
    }
    if let Some(pid) = dockerd {
        if let Err(e) = procs::signal(pid, Signal::SIGTERM) {
            eprintln!("testbed: {e:#}");
        }
    }
    let daemons: Vec<u32> = dockerd.into_iter().chain(containerd).collect();
    if !procs::wait_gone(&daemons, DAEMON_TIMEOUT, reap) {
        for &pid in daemons.iter().filter(|&&p| procs::alive(p)) {
            eprintln!("testbed: dockerd/containerd {pid} outlived SIGTERM; killing it");
            let _ = procs::signal(pid, Signal::SIGKILL);
        }
        if !procs::wait_gone(&daemons, Duration::from_secs(5), || {}) {
            eprintln!("testbed: dockerd/containerd {daemons:?} survived SIGKILL");
        }
    }
    procs::end_stragglers(&needle, Duration::from_secs(5), "dockerd");
    if let Err(e) = procs::unmount_under(&layout.root) {
        eprintln!("testbed: {e:#}");
    }
}

/// `docker rm -f $(docker ps -aq)`.
fn remove_all_containers(layout: &Layout, scratch: &Path) -> Result<()> {
    let docker = |args: &[&str]| -> Result<String> {
        let mut c = cmd::command(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", layout.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", layout.root.join("client"));
        cmd::check(
            cmd::output(c, scratch)?,
            &format!("docker {}", args.join(" ")),
        )
    };
    let ids = docker(&["ps", "-aq"])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut args = vec!["rm", "-f"];
    args.extend(ids);
    docker(&args).map(drop)
}

#[cfg(test)]
mod tests {
    //! Checks of the dockerd harness, without nsbypass.

    use super::*;
    use crate::{require_tools, skip_unless_root};
    use serde_json::json;

    /// Skips without root or docker (printing why); true means "return now".
    fn skip() -> bool {
        if skip_unless_root() {
            return true;
        }
        require_tools();
        if let Err(e) = check_docker_tools() {
            eprintln!("skipping: {e:#}");
            return true;
        }
        false
    }

    #[test]
    fn dockerd_runs_imported_rootfs_and_leaves_nothing() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let config = tb.write_daemon_json("daemon.json", &json!({}))?;
        let started = Instant::now();
        let d = tb.dockerd(&config)?;
        eprintln!("dockerd answered after {:?}", started.elapsed());
        let (pid, root) = (d.pid, d.root.clone());
        let containerd = fs::read_to_string(d.exec_root.join("containerd/containerd.pid"))?
            .trim()
            .parse::<u32>()?;
        assert!(procs::alive(pid) && procs::alive(containerd));
        // dockerd runs in the testbed's host netns.
        let host_ns = fs::read_link(format!("/proc/{pid}/ns/net"))?;
        let want = fs::metadata(format!("/run/netns/{}", tb.host_ns))?;
        assert_eq!(
            host_ns.to_string_lossy(),
            format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&want))
        );
        assert!(
            tb.dir.join("dockerd-key.json").exists(),
            "trust key not in the testbed"
        );

        d.import_rootfs(&tb.rootfs(), "nbtest")?;
        let out = d.docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "nbtest",
            "sh",
            "-c",
            "echo ok",
        ])?;
        assert_eq!(out, "ok\n");

        d.docker_ok(&[
            "run",
            "-d",
            "--name",
            "sleeper",
            "--network",
            "none",
            "nbtest",
            "sleep",
            "3600",
        ])?;
        let sleeper = d.pid_of("sleeper")?;
        assert!(procs::alive(sleeper));
        assert!(!procs::mounts_under(&root)?.is_empty(), "no docker mounts");

        // A runtime added to daemon.json shows up after a reload.
        tb.write_daemon_json(
            "daemon.json",
            &json!({"runtimes": {"x": {"path": "/usr/sbin/runc", "runtimeArgs": ["--debug"]}}}),
        )?;
        d.reload()?;
        let runtimes = d.docker_ok(&["info", "--format", "{{json .Runtimes}}"])?;
        assert!(runtimes.contains("\"x\""), "runtimes: {runtimes}");
        assert!(d.data_root.join("runtimes/x").exists());
        fs::write(&config, "{ not json")?;
        let err = format!(
            "{:#}",
            d.reload().expect_err("reload of broken JSON succeeded")
        );
        assert!(err.contains("level=error"), "{err}");

        let stopping = Instant::now();
        drop(d);
        eprintln!("dockerd stopped after {:?}", stopping.elapsed());
        for p in [pid, containerd, sleeper] {
            assert!(!procs::alive(p), "pid {p} lives");
        }
        assert!(procs::pids_mentioning(&format!("{}/", tb.dir.display())).is_empty());
        assert!(procs::mounts_under(&tb.dir)?.is_empty());
        assert!(!root.exists(), "{} is left", root.display());

        // Another dockerd can follow in the same testbed; the testbed's Drop
        // stops it if its Dockerd is still around.
        let again = tb.dockerd(&tb.write_daemon_json("daemon.json", &json!({}))?)?;
        let (pid, dir) = (again.pid, tb.dir.clone());
        drop(tb);
        assert!(!procs::alive(pid), "dockerd {pid} outlived the testbed");
        assert!(!dir.exists(), "{} is left", dir.display());
        drop(again);
        Ok(())
    }

    #[test]
    fn dockerd_that_cannot_start_fails_with_its_log() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let config = tb.write_daemon_json("daemon.json", &json!({"no-such-option": true}))?;
        let err = format!("{:#}", tb.dockerd(&config).expect_err("dockerd started"));
        assert!(err.contains("no-such-option"), "{err}");
        assert!(!tb.dir.join("docker").exists());
        Ok(())
    }
}
