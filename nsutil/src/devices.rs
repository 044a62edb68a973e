//! Letting a container's device cgroup allow a few more devices, exactly
//! those, and taking that back.
//!
//! cgroup v1: a rule per device in `devices.allow` (and `devices.deny` to
//! undo), for just the access bits the cgroup lacked. cgroup v2: the
//! runtime's eBPF filters are swapped for copies that allow the devices
//! first (see [`crate::bpf`]). Either way, what the runtime granted is
//! never taken away by an undo, and a cgroup other processes share is
//! refused: a grant there would reach them too.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::bpf::{self, Allowed};
use crate::{Error, Result};

/// A device node's identity, as cgroups see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub block: bool,
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// `c 10:229` / `b 7:0`.
    pub fn rule(&self) -> String {
        let kind = if self.block { 'b' } else { 'c' };
        format!("{kind} {}:{}", self.major, self.minor)
    }
}

/// Where a process's device rules live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCgroup {
    V1(PathBuf),
    V2(PathBuf),
}

/// What a grant changed, to revoke it.
pub enum Grant {
    /// Rules written to `devices.allow`, each with the access bits added.
    V1 {
        dir: PathBuf,
        added: Vec<(Device, String)>,
    },
    /// (original, widened copy) pairs, the copy attached in place.
    V2 {
        cgroup: OwnedFd,
        swaps: Vec<(OwnedFd, OwnedFd)>,
    },
}

impl DeviceCgroup {
    /// The device cgroup of `pid`, as the caller's mount namespace shows
    /// the cgroup filesystems: v2 when `/sys/fs/cgroup` is cgroup2, else
    /// the v1 `devices` hierarchy. Refused if any other process is in it.
    pub fn of_pid(pid: i32) -> Result<DeviceCgroup> {
        let op = || format!("find the device cgroup of pid {pid}");
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| Error::new(op(), e))?;
        let mounts =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::new(op(), e))?;
        let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        let missing = |what: &str| Error::new(op(), std::io::Error::other(what.to_owned()));
        let cgroup = if unified {
            let path = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or_else(|| missing("no cgroup v2 entry"))?;
            let root = mount_root_at(&mounts, Path::new("/sys/fs/cgroup"), "cgroup2")
                .ok_or_else(|| missing("cgroup2 is not what is mounted at /sys/fs/cgroup"))?;
            DeviceCgroup::V2(
                join(Path::new("/sys/fs/cgroup"), &root, path)
                    .ok_or_else(|| missing("its cgroup lies outside the mount"))?,
            )
        } else {
            let path = cgroups
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    controllers
                        .split(',')
                        .any(|c| c == "devices")
                        .then_some(path)
                })
                .ok_or_else(|| missing("no v1 devices cgroup"))?;
            let (root, mount) = devices_mount(&mounts)
                .ok_or_else(|| missing("the devices controller is not mounted"))?;
            DeviceCgroup::V1(
                join(&mount, &root, path)
                    .ok_or_else(|| missing("its cgroup lies outside the mount"))?,
            )
        };
        cgroup.check_alone(pid)?;
        Ok(cgroup)
    }

    fn dir(&self) -> &Path {
        match self {
            DeviceCgroup::V1(dir) | DeviceCgroup::V2(dir) => dir,
        }
    }

    /// At prestart the container's init is alone in its cgroup; anything
    /// else there would share the grant.
    fn check_alone(&self, pid: i32) -> Result<()> {
        let path = self.dir().join("cgroup.procs");
        let procs = std::fs::read_to_string(&path)
            .map_err(|e| Error::new(format!("read {}", path.display()), e))?;
        let others = procs
            .lines()
            .filter(|l| l.trim().parse::<i32>() != Ok(pid))
            .count();
        if others > 0 {
            return Err(Error::new(
                format!("grant devices in {}", self.dir().display()),
                std::io::Error::other(format!(
                    "{others} other process(es) share this cgroup; a grant would reach them too"
                )),
            ));
        }
        Ok(())
    }

    /// Lets the cgroup use `devices` (read, write, mknod), and nothing else.
    /// On failure nothing stays granted.
    pub fn grant(&self, devices: &[Device]) -> Result<Grant> {
        match self {
            DeviceCgroup::V1(dir) => grant_v1(dir, devices),
            DeviceCgroup::V2(dir) => grant_v2(dir, devices),
        }
    }
}

fn grant_v1(dir: &Path, devices: &[Device]) -> Result<Grant> {
    let list = std::fs::read_to_string(dir.join("devices.list"))
        .map_err(|e| Error::new(format!("read {}/devices.list", dir.display()), e))?;
    let mut grant = Grant::V1 {
        dir: dir.to_owned(),
        added: Vec::new(),
    };
    for device in devices {
        let missing: String = "rwm"
            .chars()
            .filter(|bit| !v1_allowed(&list, device).contains(*bit))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if let Err(e) = write_rule(dir, "devices.allow", device, &missing) {
            let _ = grant.revoke();
            return Err(e);
        }
        if let Grant::V1 { added, .. } = &mut grant {
            added.push((*device, missing));
        }
    }
    Ok(grant)
}

fn grant_v2(dir: &Path, devices: &[Device]) -> Result<Grant> {
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| Error::new(format!("open cgroup {}", dir.display()), e))?
        .into();
    let attached = bpf::device_programs(cgroup.as_fd())?;
    let refuse = |why: &str| {
        Err(Error::new(
            format!("widen the device filter of {}", dir.display()),
            std::io::Error::other(why.to_owned()),
        ))
    };
    if !attached.multi && !attached.own.is_empty() {
        return refuse("its program is not attached with BPF_F_ALLOW_MULTI");
    }
    // Programs inherited from ancestors judge too, and cannot be widened here.
    if attached.effective > attached.own.len() {
        return refuse("an ancestor cgroup filters devices too");
    }
    let allowed: Vec<Allowed> = devices
        .iter()
        .map(|d| Allowed {
            kind: if d.block {
                bpf::DEV_BLOCK
            } else {
                bpf::DEV_CHAR
            },
            major: d.major,
            minor: d.minor,
        })
        .collect();
    // Load every copy before swapping any, so a copy that cannot be made
    // leaves the cgroup as it was. No program at all: nothing is filtered.
    let mut pairs = Vec::new();
    for original in attached.own {
        let widened = bpf::widen(original.as_fd(), &allowed)?;
        pairs.push((original, widened));
    }
    let mut swaps = Vec::new();
    for (original, widened) in pairs {
        if let Err(e) = bpf::replace(cgroup.as_fd(), original.as_fd(), widened.as_fd()) {
            let partial = Grant::V2 { cgroup, swaps };
            let _ = partial.revoke();
            return Err(e);
        }
        swaps.push((original, widened));
    }
    Ok(Grant::V2 { cgroup, swaps })
}

impl Grant {
    /// Takes back exactly what the grant added; keeps going on errors and
    /// reports the first.
    pub fn revoke(&self) -> Result<()> {
        let mut first = None;
        match self {
            Grant::V1 { dir, added } => {
                for (device, bits) in added {
                    if let Err(e) = write_rule(dir, "devices.deny", device, bits) {
                        first.get_or_insert(e);
                    }
                }
            }
            Grant::V2 { cgroup, swaps } => {
                for (original, widened) in swaps.iter().rev() {
                    if let Err(e) = bpf::replace(cgroup.as_fd(), widened.as_fd(), original.as_fd())
                    {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn write_rule(dir: &Path, file: &str, device: &Device, bits: &str) -> Result<()> {
    let path = dir.join(file);
    let rule = format!("{} {bits}", device.rule());
    std::fs::write(&path, &rule)
        .map_err(|e| Error::new(format!("write {rule} to {}", path.display()), e))
}

/// The access bits a v1 `devices.list` already allows for `device`.
fn v1_allowed(list: &str, device: &Device) -> String {
    let mut bits = String::new();
    for line in list.lines() {
        let mut parts = line.split_whitespace();
        let (Some(kind), Some(numbers), Some(access)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some((major, minor)) = numbers.split_once(':') else {
            continue;
        };
        let kind_ok = kind == "a" || kind == if device.block { "b" } else { "c" };
        let number_ok = |field: &str, value: u32| field == "*" || field.parse() == Ok(value);
        if kind_ok && number_ok(major, device.major) && number_ok(minor, device.minor) {
            for bit in access.chars() {
                if !bits.contains(bit) {
                    bits.push(bit);
                }
            }
        }
    }
    bits
}

/// Fields of a mountinfo line: (root, mount point, fstype, super options).
fn mountinfo_entries(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split_whitespace().collect();
        let mut right = right.split_whitespace();
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        Some((*fields.get(3)?, *fields.get(4)?, fstype, options))
    })
}

/// The root of the `fstype` mount that is on top at `point`: a mount that
/// covers an older one is listed after it.
fn mount_root_at(mountinfo: &str, point: &Path, fstype: &str) -> Option<String> {
    let top = mountinfo_entries(mountinfo)
        .filter(|(_, p, _, _)| Path::new(p) == point)
        .last()?;
    (top.2 == fstype).then(|| top.0.to_owned())
}

/// The root and mount point of the (last mounted) v1 devices hierarchy.
fn devices_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    mountinfo_entries(mountinfo)
        .filter(|(_, _, fstype, options)| {
            *fstype == "cgroup" && options.split(',').any(|o| o == "devices")
        })
        .last()
        .map(|(root, point, _, _)| (root.to_owned(), PathBuf::from(point)))
}

/// `mount` + (`path` below the mount's `root`), by path components.
fn join(mount: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path).strip_prefix(root).ok()?;
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(mount.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_list_matching() {
        let dev = Device {
            block: false,
            major: 10,
            minor: 229,
        };
        assert_eq!(v1_allowed("a *:* rwm\n", &dev), "rwm");
        assert_eq!(v1_allowed("c 1:3 rwm\nc 10:* rwm\n", &dev), "rwm");
        assert_eq!(v1_allowed("c 10:229 rw\n", &dev), "rw");
        assert_eq!(v1_allowed("c 10:229 r\nc *:* m\n", &dev), "rm");
        assert_eq!(v1_allowed("b 10:229 rwm\n", &dev), "");
        assert_eq!(v1_allowed("c 1:3 rwm\nc 136:* rwm\n", &dev), "");
    }

    #[test]
    fn cgroup_mounts_are_found_in_mountinfo() {
        let info = "\
30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
35 30 0:31 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:32 /nested /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let (root, mount) = devices_mount(info).unwrap();
        assert_eq!(
            (root.as_str(), mount.as_path()),
            ("/", Path::new("/sys/fs/cgroup/devices"))
        );
        assert_eq!(
            join(&mount, &root, "/c1").unwrap(),
            Path::new("/sys/fs/cgroup/devices/c1")
        );
        assert_eq!(
            mount_root_at(info, Path::new("/sys/fs/cgroup"), "cgroup2"),
            None,
            "tmpfs is on top"
        );
        // A cgroup2 mounted over /sys/fs/cgroup later (a private mount
        // namespace) is the one that counts.
        let covered = format!("{info}40 22 0:32 / /sys/fs/cgroup rw - cgroup2 none rw\n");
        assert_eq!(
            mount_root_at(&covered, Path::new("/sys/fs/cgroup"), "cgroup2").as_deref(),
            Some("/")
        );
        let unified = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            join(unified, "/nested", "/nested/x").unwrap(),
            unified.join("x")
        );
        assert_eq!(join(unified, "/nested", "/other"), None);
        // Prefixes count by component: /docker/abc is not below /docker/ab.
        assert_eq!(join(unified, "/docker/ab", "/docker/abc/x"), None);
        assert_eq!(join(unified, "/", "/a/../../etc"), None);
    }
}
