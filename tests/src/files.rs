//! Making the odd files the bypass-stack tests need in a rootfs or on the
//! machine: device nodes, and symlinks a hostile image could ship.

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// Makes a character device node `path` for device `major:minor`, mode
/// 0666, e.g. a stand-in for a NIC's device file in a rootfs or a fake
/// "host device" for the hook to carry into a container. The mode is set
/// after `mknod`, so the caller's umask does not narrow it. Fails if `path`
/// exists. Needs CAP_MKNOD, and a filesystem not mounted `nodev` for the
/// node to be openable.
pub fn mknod_char(path: &Path, major: u32, minor: u32) -> Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let dev = makedev(u64::from(major), u64::from(minor));
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), dev)
        .with_context(|| format!("mknod {} c {major} {minor}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod 0666 {}", path.display()))
}

/// Makes `<rootfs>/<link>` a symlink whose target is `target` verbatim
/// (absolute like `/tmp/host-dir`, or climbing like `../../../../tmp/host-dir`),
/// as a hostile image could ship it, to check that the hook resolves paths
/// inside the rootfs instead of following such links onto the machine.
/// `link` is taken relative to `rootfs` even if it starts with `/`; it must
/// not contain `..`. Missing parent directories are created and whatever is
/// at `link` already (file, symlink or directory tree) is removed first.
/// Parent directories that are symlinks are followed (onto the machine, for
/// a hostile one), so plant hostile links after everything below them.
pub fn symlink_in(rootfs: &Path, link: &str, target: &str) -> Result<()> {
    let relative = Path::new(link.trim_start_matches('/'));
    if relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("symlink path {link:?} must name a file below the rootfs, without `.` or `..`");
    }
    let path = rootfs.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path)
            .with_context(|| format!("removing the directory {}", path.display()))?,
        Ok(_) => fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    }
    std::os::unix::fs::symlink(target, &path)
        .with_context(|| format!("symlink {} -> {target}", path.display()))
}
