//! A minimal container root filesystem made from the machine's static busybox,
//! so the tests need no image, no registry and no network.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// The static busybox the rootfs is made of (Debian's `busybox-static`).
pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// Whether `path` is an executable the container can run without the host's
/// libraries: a dynamically linked busybox would fail inside the container
/// with a baffling "no such file or directory". The ELF interpreter path sits
/// in the first bytes of a dynamic executable.
pub(crate) fn is_static(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let head = &bytes[..bytes.len().min(4096)];
    let names_interpreter = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    Ok(!names_interpreter(b"/ld-linux") && !names_interpreter(b"/ld-musl"))
}

/// Makes a busybox rootfs in the new directory `dir`: `bin/busybox`, a
/// symlink in `bin/` for every applet it has (so `sh`, `ip`, `ping`, `sleep`,
/// `cat`, `nc`, ... are on the default PATH), and the empty directories runc
/// mounts over (`proc`, `sys`, `dev`) or programs expect (`etc`, `tmp`). The
/// mount points must exist beforehand because a shared rootfs is read-only.
pub(crate) fn make(dir: &Path) -> Result<()> {
    for sub in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let busybox = dir.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox)
        .with_context(|| format!("copying {BUSYBOX} to {}", busybox.display()))?;

    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    let out = cmd::check(list, "busybox --list")?;
    let applets: Vec<&str> = out.lines().filter(|a| *a != "busybox").collect();
    if applets.is_empty() {
        bail!("`{BUSYBOX} --list` named no applets");
    }
    for applet in applets {
        let link = dir.join("bin").join(applet);
        symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}
