//! Finding and ending what a container engine leaves behind in the machine's
//! process table and mount table: daemons (dockerd, containerd), their
//! helpers (containerd shims, conmon, `podman container cleanup`) and the
//! mounts they make under a testbed's directory (overlay and shm mounts,
//! netns bind mounts, dockerd's bind mount of its data root).
//!
//! Processes are only ever found by a testbed-specific path in their command
//! line and signalled by pid, so nothing outside the testbed is touched.

use anyhow::{Context, Result};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Whether `pid` runs. A zombie does not count: a daemon that exited but is
/// not yet reaped (by us, or by the machine's init, which here reaps orphans
/// only after a while) holds nothing any more.
pub(crate) fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
}

/// `pid`'s command line with NULs as spaces, or `None` if it is gone.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Whether `pid` is a live process whose command line contains `needle`:
/// guards every signal sent to a pid read from a pidfile against pid reuse.
pub(crate) fn alive_and_mentions(pid: u32, needle: &str) -> bool {
    alive(pid) && cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// Live processes (other than this one) whose command line contains
/// `needle`, a path inside one testbed's directory.
pub(crate) fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive_and_mentions(pid, needle))
        .collect()
}

/// Sends `signal` to `pid`; a process that is already gone is no error.
pub(crate) fn signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
    }
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; returns
/// whether it held.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Polls until none of `pids` is [`alive`] or `timeout` passes; `tick` runs
/// on every round (e.g. to reap a child). Returns whether all are gone.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration, mut tick: impl FnMut()) -> bool {
    wait_until(timeout, || {
        tick();
        !pids.iter().any(|&p| alive(p))
    })
}

/// Gives the processes whose command line mentions `needle` up to `grace` to
/// exit on their own (a shim or conmon finishing its clean-up), then
/// SIGKILLs the rest by pid. `what` names them in the report on stderr.
pub(crate) fn end_stragglers(needle: &str, grace: Duration, what: &str) {
    let mut pids = pids_mentioning(needle);
    if pids.is_empty() || wait_gone(&pids, grace, || {}) {
        return;
    }
    pids.retain(|&p| alive(p));
    for &pid in &pids {
        let line = cmdline(pid).unwrap_or_default();
        eprintln!(
            "testbed: {what}: killing leftover pid {pid}: {}",
            line.trim()
        );
        if let Err(e) = signal(pid, Signal::SIGKILL) {
            eprintln!("testbed: {what}: {e:#}");
        }
    }
    if !wait_gone(&pids, Duration::from_secs(5), || {}) {
        eprintln!("testbed: {what}: pids {pids:?} survived SIGKILL");
    }
}

/// The mount points at or below `dir` in this process's mount namespace
/// (the machine's: the testbed switches only network namespaces), deepest
/// first, so that they can be unmounted in that order.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    // mountinfo shows resolved paths: resolve `dir` too (e.g. if $TMPDIR is
    // reached through a symlink).
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything at or below `dir`, deepest first, repeating while
/// unmounting uncovers more (mounts stacked on one point, e.g. dockerd's
/// bind mount of its data root onto itself); falls back to a lazy unmount
/// for a busy mount. Errs, naming what is left, if anything stays mounted.
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..10 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in &mounts {
            if umount2(m.as_path(), MntFlags::empty()).is_err() {
                // Busy (a process still has it open): detach it from the
                // tree now; the kernel frees it when the last user goes.
                let _ = umount2(m.as_path(), MntFlags::MNT_DETACH);
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "still mounted under {}: {}",
        dir.display(),
        left.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain\9"), r"/plain\9");
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_pid_is_not() {
        assert!(alive(std::process::id()));
        // Above Linux's largest pid_max.
        assert!(!alive(4_194_305));
        assert!(pids_mentioning("/nonexistent/nsbypass-testbed-needle/").is_empty());
    }
}
