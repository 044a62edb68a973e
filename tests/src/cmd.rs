//! Running the external tools the testbed is made of (`ip`, `nsenter`, `runc`).
//!
//! Every command gets a deadline: a hung hook or runc must fail one test with a
//! message, not stall the whole suite until CI's time runs out. Output goes to
//! files, never to pipes read until EOF, because a process the command leaves
//! behind (a container's init, a daemon a hook forks) could hold a pipe open
//! forever.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long one external command may run before it is killed. Generous,
/// because two cores run many tests at once, and longer than the hooks'
/// own timeout so that runc reports a hung hook itself.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// The directories searched for tools: the caller's `PATH` plus the sbin
/// directories, which a non-login root shell or CI may leave out although
/// `runc` and `ip` live there on Debian.
pub(crate) fn search_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut dirs: Vec<String> = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect();
        for extra in "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".split(':') {
            if !dirs.iter().any(|d| d == extra) {
                dirs.push(extra.to_owned());
            }
        }
        dirs.join(":")
    })
}

/// Finds an executable named `name` in [`search_path`].
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    search_path()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A `Command` for `program` whose children find tools the way [`which`] does.
pub(crate) fn command<S: AsRef<std::ffi::OsStr>>(program: S) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", search_path()).stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion and returns its output, whatever its exit status
/// (like [`Command::output`]); errs only if it could not be run or timed out.
/// `scratch` is a directory for the capture files, which are removed again.
pub(crate) fn output(mut cmd: Command, scratch: &Path) -> Result<Output> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!(".cmd-{n}.out"));
    let err_path = scratch.join(format!(".cmd-{n}.err"));
    let status = run_to_files(&mut cmd, &out_path, &err_path);
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let result = status.and_then(|status| {
        Ok(Output {
            status,
            stdout: read(&out_path)?,
            stderr: read(&err_path)?,
        })
    });
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result
}

/// Runs `cmd` with stdout and stderr sent to (truncated) files at the given
/// paths and waits for it, up to [`COMMAND_TIMEOUT`].
pub(crate) fn run_to_files(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Result<ExitStatus> {
    let create = |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
    cmd.stdout(create(stdout)?).stderr(create(stderr)?);
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    wait_with_deadline(child, &format!("{cmd:?}"))
}

/// Waits for `child`; kills it (by its own pid, through `Child`) if it is
/// still running after [`COMMAND_TIMEOUT`].
fn wait_with_deadline(mut child: Child, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} still ran after {COMMAND_TIMEOUT:?}; killed it");
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Turns a finished command's output into its stdout, or an error carrying
/// its exit status and stderr when it failed.
pub(crate) fn check(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{what} failed ({}); stderr: {}; stdout: {}",
            out.status,
            stderr.trim(),
            stdout.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
