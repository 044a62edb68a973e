//! Another process's resource limits (`prlimit`), read, never changed.

use crate::{Error, Result};

/// The soft and hard limit `name` (`memlock`, as a profile names it) of
/// process `pid`; `u64::MAX` is unlimited.
pub fn of(pid: i32, name: &str) -> Result<(u64, u64)> {
    let op = || format!("prlimit {name} of pid {pid}");
    let resource = match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return Err(Error::new(op(), std::io::Error::other("no such limit"))),
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only writes the old one into
    // the struct we own.
    let rc = unsafe { libc::prlimit(pid, resource, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(Error::new(op(), std::io::Error::last_os_error()));
    }
    Ok((old.rlim_cur, old.rlim_max))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_limits() {
        let (soft, hard) = super::of(std::process::id() as i32, "nofile").unwrap();
        assert!(soft <= hard && soft > 0);
        assert!(super::of(1, "bogus").is_err());
    }
}
