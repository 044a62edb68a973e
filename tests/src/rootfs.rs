//! A minimal container root filesystem made from the machine's static busybox,
//! so the tests need no image, no registry and no network.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
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
/// mounts over (`proc`, `sys`, `dev`) or programs expect (`etc`, empty,
/// `usr/lib` and `opt`, as every distribution image has them, and `tmp`,
/// mode 1777 like a real one). The mount points must exist beforehand
/// because a shared rootfs is read-only.
pub(crate) fn make(dir: &Path) -> Result<()> {
    for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "usr/lib", "opt"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = dir.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("chmod 1777 {}", tmp.display()))?;
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

/// Copies `program` to `<rootfs>/usr/local/bin/<file name>` and each shared
/// library it needs (see [`shared_libraries`]) to the same absolute path
/// below `rootfs`. `fs::copy` follows symlinks, so the rootfs gets real files
/// and never a link that would resolve to nothing inside the container.
/// `scratch` is a directory for [`cmd::output`]'s capture files.
pub(crate) fn add_program(rootfs: &Path, program: &Path, scratch: &Path) -> Result<()> {
    let name = program
        .file_name()
        .with_context(|| format!("{} has no file name", program.display()))?;
    let mut copies = vec![(program.to_path_buf(), Path::new("usr/local/bin").join(name))];
    for lib in shared_libraries(program, scratch)? {
        let inside = lib
            .strip_prefix("/")
            .with_context(|| format!("ldd named the relative path {}", lib.display()))?
            .to_path_buf();
        copies.push((lib, inside));
    }
    for (from, inside) in copies {
        let to = rootfs.join(inside);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The absolute paths of the shared objects `program` loads at start, per
/// `ldd`: the libraries (`libc.so.6 => /lib/.../libc.so.6 (0x...)`) and the
/// dynamic loader (`/lib64/ld-linux-x86-64.so.2 (0x...)`), without the
/// kernel's vDSO, which has no file. None for a static program. Fails if a
/// library is `not found`, because the program would not run in the
/// container either.
pub(crate) fn shared_libraries(program: &Path, scratch: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = cmd::command("ldd");
    ldd.arg(program);
    let out = cmd::output(ldd, scratch)?;
    if !out.status.success() {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if said.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
    }
    let text = cmd::check(out, &format!("ldd {}", program.display()))?;
    parse_ldd(&text).with_context(|| format!("reading `ldd {}`: {text}", program.display()))
}

/// The parsing half of [`shared_libraries`].
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((soname, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} is not found", soname.trim());
                }
                // `linux-vdso.so.1 =>  (0x...)` in some ldd versions.
                target.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ldd_keeps_libraries_and_the_loader() -> Result<()> {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1b7f2000)\n\
                    \tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f5a1c6e0000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5a1c4ff000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f5a1c6f2000)\n";
        let libs = parse_ldd(text)?;
        let want = [
            "/lib/x86_64-linux-gnu/libdl.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ];
        assert_eq!(libs, want.map(PathBuf::from));
        Ok(())
    }

    #[test]
    fn parse_ldd_fails_on_a_missing_library() {
        let text =
            "\tlibnope.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        let err = parse_ldd(text).expect_err("a missing library was accepted");
        assert!(format!("{err:#}").contains("libnope.so.1"), "{err:#}");
    }
}
