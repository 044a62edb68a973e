//! How the testbed drives runc.
//!
//! runc is started as `nsenter --net=<testbed host netns> runc --root <testbed
//! dir>/runc ...`, so runc, the network namespaces it creates and the hooks it
//! runs all take the testbed's "host" namespace for the machine's, and each
//! testbed has container ids of its own. `ip netns exec` is not used: it
//! remounts /sys in a new mount namespace, which hides the cgroup mounts runc
//! needs.
//!
//! In a cgroup v2 testbed ([`crate::Testbed::new_cgroup2`]) each runc is
//! started one step earlier, as `unshare -m --propagation private sh -c
//! 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' sh nsenter ... runc
//! ...`: in a mount namespace of its own, cgroup2 covers the machine's v1
//! (hybrid) `/sys/fs/cgroup`, so runc finds a unified hierarchy and manages
//! the container as on a cgroup v2 machine (`0::/<cgroupsPath>`, devices
//! policed by an eBPF program), and the hooks it runs see the same. The
//! testbed's arguments reach runc as `"$@"`, never through the shell's parser.

use crate::cmd;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The shell script that puts a cgroup2 mount over `/sys/fs/cgroup` in the
/// (new, private) mount namespace `unshare` made and then runs its arguments.
/// `exec`, so that the deadline in [`cmd`] kills runc itself; `&&`, because
/// without the mount runc would quietly fall back to cgroup v1.
const CGROUP2_SCRIPT: &str = "mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"";

/// What a runc invocation of one testbed needs; cheap to clone so that each
/// [`crate::Container`] owns one and outlives no borrow.
#[derive(Clone, Debug)]
pub(crate) struct Runc {
    /// `/run/netns/<tag>-h`.
    host_netns: PathBuf,
    /// runc's `--root`: the state of this testbed's containers.
    root: PathBuf,
    /// Where [`cmd::output`] may put its capture files.
    scratch: PathBuf,
    /// Whether runc runs with cgroup2 mounted at `/sys/fs/cgroup` (see the
    /// module docs).
    cgroup2: bool,
}

impl Runc {
    pub(crate) fn new(host_netns: PathBuf, root: PathBuf, scratch: PathBuf, cgroup2: bool) -> Runc {
        Runc {
            host_netns,
            root,
            scratch,
            cgroup2,
        }
    }

    /// Whether runc sees cgroup v2 (see the module docs).
    pub(crate) fn cgroup2(&self) -> bool {
        self.cgroup2
    }

    /// `nsenter --net=<host netns> runc --root <root> <args>`, not yet run;
    /// in cgroup v2 mode wrapped in `unshare -m ... sh -c 'mount ... && exec
    /// "$@"' sh` (see the module docs).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        self.command_via(&["runc".into()], args)
    }

    /// Like [`Runc::command`], with `wrapper` (a program and its
    /// arguments, such as `nsbypass runtime --runtime runc --`) in runc's
    /// place: it is handed runc's arguments.
    pub(crate) fn command_via(&self, wrapper: &[std::ffi::OsString], args: &[&str]) -> Command {
        let mut c = if self.cgroup2 {
            let mut c = cmd::command("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(CGROUP2_SCRIPT)
                // $0 of the script; the command proper follows as "$@".
                .args(["sh", "nsenter"]);
            c
        } else {
            cmd::command("nsenter")
        };
        c.arg(format!("--net={}", self.host_netns.display()))
            .args(wrapper)
            .arg("--root")
            .arg(&self.root)
            .args(args);
        c
    }

    /// Runs runc with `args`; the output whatever runc's exit status.
    pub(crate) fn output(&self, args: &[&str]) -> Result<Output> {
        cmd::output(self.command(args), &self.scratch)
    }

    /// Runs runc with `args` and fails unless runc succeeds; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String> {
        cmd::check(self.output(args)?, &format!("runc {}", args.join(" ")))
    }

    /// `runc state <id>` as JSON.
    pub(crate) fn state(&self, id: &str) -> Result<Value> {
        let text = self.ok(&["state", id])?;
        serde_json::from_str(&text).with_context(|| format!("parsing `runc state {id}`: {text}"))
    }

    /// Polls `runc state` until the container's status is `want` (runc's
    /// commands return before the status settles, e.g. after `kill`); returns
    /// the last state.
    pub(crate) fn wait_for_status(&self, id: &str, want: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = self.state(id)?;
            let status = state["status"].as_str().unwrap_or_default();
            if status == want {
                return Ok(state);
            }
            if Instant::now() > deadline {
                bail!("container {id} is still {status:?}, not {want:?}, after 10 s");
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The ids of the containers under this root.
    pub(crate) fn list(&self) -> Result<Vec<String>> {
        let text = self.ok(&["list", "--format", "json"])?;
        // runc prints `null`, not `[]`, when there are none.
        let list: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing `runc list`: {text}"))?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Best-effort `runc delete --force`, for clean-up paths that must not
    /// fail; reports what went wrong on stderr.
    pub(crate) fn force_delete(&self, id: &str) {
        if !self.root.exists() {
            // The testbed, and with it every container, is gone already.
            return;
        }
        match self.output(&["delete", "--force", id]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // Nothing to clean up: already gone, e.g. deleted by the test.
                if !stderr.contains("does not exist") {
                    eprintln!("testbed: runc delete --force {id}: {}", stderr.trim());
                }
            }
            Err(e) => eprintln!("testbed: runc delete --force {id}: {e:#}"),
        }
    }
}
