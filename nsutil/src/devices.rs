//! Letting a container's device cgroup allow a few more devices, exactly
//! those, and taking that back.
//!
//! cgroup v1: a rule per device in `devices.allow` (and `devices.deny` to
//! undo). cgroup v2: the runtime's eBPF filters are swapped for ones that
//! allow the devices and defer the rest to the originals (see [`crate::bpf`]).
//! Devices the cgroup already allows are left alone, so undoing never
//! takes away what the runtime granted.

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
        format!(
            "{} {}:{}",
            if self.block { 'b' } else { 'c' },
            self.major,
            self.minor
        )
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
    V1 {
        dir: PathBuf,
        added: Vec<Device>,
    },
    V2 {
        cgroup: OwnedFd,
        swaps: Vec<(OwnedFd, OwnedFd)>,
    },
}

impl DeviceCgroup {
    /// The device cgroup of `pid`, as the caller's mount namespace shows
    /// the cgroup filesystems: v2 when `/sys/fs/cgroup` is cgroup2, else
    /// the v1 `devices` hierarchy.
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
        if unified {
            let path = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or_else(|| missing("no cgroup v2 entry"))?;
            let (root, mount) = find_mount(&mounts, "cgroup2", None)
                .filter(|(_, mount)| mount == Path::new("/sys/fs/cgroup"))
                .ok_or_else(|| missing("cgroup2 is not what is mounted at /sys/fs/cgroup"))?;
            return Ok(DeviceCgroup::V2(
                join(&mount, &root, path).ok_or_else(|| missing("cgroup outside the mount"))?,
            ));
        }
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
        let (root, mount) = find_mount(&mounts, "cgroup", Some("devices"))
            .ok_or_else(|| missing("the devices controller is not mounted"))?;
        Ok(DeviceCgroup::V1(
            join(&mount, &root, path).ok_or_else(|| missing("cgroup outside the mount"))?,
        ))
    }

    /// Lets the cgroup use `devices` (read, write, mknod), and nothing else.
    pub fn grant(&self, devices: &[Device]) -> Result<Grant> {
        match self {
            DeviceCgroup::V1(dir) => {
                let list = std::fs::read_to_string(dir.join("devices.list"))
                    .map_err(|e| Error::new(format!("read {}/devices.list", dir.display()), e))?;
                let mut added = Vec::new();
                for device in devices {
                    if v1_allows(&list, device) {
                        continue;
                    }
                    write_rule(dir, "devices.allow", device)?;
                    added.push(*device);
                }
                Ok(Grant::V1 {
                    dir: dir.clone(),
                    added,
                })
            }
            DeviceCgroup::V2(dir) => {
                let cgroup: OwnedFd = std::fs::File::open(dir)
                    .map_err(|e| Error::new(format!("open cgroup {}", dir.display()), e))?
                    .into();
                let (programs, multi) = bpf::attached_device_programs(cgroup.as_fd())?;
                if !multi && !programs.is_empty() {
                    return Err(Error::new(
                        format!("widen the device filter of {}", dir.display()),
                        std::io::Error::other("its program is not attached with BPF_F_ALLOW_MULTI"),
                    ));
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
                let mut grant = Grant::V2 {
                    cgroup,
                    swaps: Vec::new(),
                };
                // With no program attached, v2 restricts no device at all.
                for original in programs {
                    let widened = bpf::widen(original.as_fd(), &allowed)?;
                    let Grant::V2 { cgroup, swaps } = &mut grant else {
                        unreachable!()
                    };
                    let swapped = bpf::replace(cgroup.as_fd(), original.as_fd(), widened.as_fd());
                    if let Err(e) = swapped {
                        let _ = grant.revoke();
                        return Err(e);
                    }
                    swaps.push((original, widened));
                }
                Ok(grant)
            }
        }
    }
}

impl Grant {
    /// Takes back exactly what the grant added; keeps going on errors and
    /// reports the first.
    pub fn revoke(&self) -> Result<()> {
        let mut first = None;
        match self {
            Grant::V1 { dir, added } => {
                for device in added {
                    if let Err(e) = write_rule(dir, "devices.deny", device) {
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

fn write_rule(dir: &Path, file: &str, device: &Device) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, format!("{} rwm", device.rule()))
        .map_err(|e| Error::new(format!("write {} to {}", device.rule(), path.display()), e))
}

/// Whether a v1 `devices.list` already allows every access to `device`.
fn v1_allows(list: &str, device: &Device) -> bool {
    list.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let (Some(kind), Some(numbers), Some(access)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let kind_ok = kind == "a" || kind == if device.block { "b" } else { "c" };
        let Some((major, minor)) = numbers.split_once(':') else {
            return false;
        };
        let number_ok = |field: &str, value: u32| field == "*" || field.parse() == Ok(value);
        kind_ok
            && number_ok(major, device.major)
            && number_ok(minor, device.minor)
            && "rwm".chars().all(|c| access.contains(c))
    })
}

/// The mount root and mount point of a cgroup filesystem of type `fstype`
/// (with `controller` among its super options, for v1). The last match
/// wins: a mount that covers an older one is listed after it.
fn find_mount(
    mountinfo: &str,
    fstype: &str,
    controller: Option<&str>,
) -> Option<(String, PathBuf)> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split_whitespace().collect();
        let mut right = right.split_whitespace();
        let (kind, _source, options) = (right.next()?, right.next()?, right.next()?);
        let matches =
            kind == fstype && controller.is_none_or(|c| options.split(',').any(|o| o == c));
        if !matches {
            return None;
        }
        Some((fields.get(3)?.to_string(), PathBuf::from(fields.get(4)?)))
    })
}

/// `mount` + (`path` below the mount's `root`).
fn join(mount: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let relative = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|p| p == "..") {
        return None;
    }
    Some(if relative.is_empty() {
        mount.to_owned()
    } else {
        mount.join(relative)
    })
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
        assert!(v1_allows("a *:* rwm\n", &dev));
        assert!(v1_allows("c 1:3 rwm\nc 10:* rwm\n", &dev));
        assert!(!v1_allows("c 10:229 rw\n", &dev), "m missing");
        assert!(!v1_allows("b 10:229 rwm\n", &dev));
        assert!(!v1_allows("c 1:3 rwm\nc 136:* rwm\n", &dev));
    }

    #[test]
    fn cgroup_mounts_are_found_in_mountinfo() {
        let info = "\
30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
35 30 0:31 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:32 /nested /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let (root, mount) = find_mount(info, "cgroup", Some("devices")).unwrap();
        assert_eq!(
            (root.as_str(), mount.as_path()),
            ("/", Path::new("/sys/fs/cgroup/devices"))
        );
        assert_eq!(
            join(&mount, &root, "/c1").unwrap(),
            Path::new("/sys/fs/cgroup/devices/c1")
        );
        let (root, mount) = find_mount(info, "cgroup2", None).unwrap();
        assert_eq!(
            join(&mount, &root, "/nested/x").unwrap(),
            Path::new("/sys/fs/cgroup/unified/x")
        );
        // A cgroup2 mounted over /sys/fs/cgroup later (a private mount
        // namespace) is the one that counts.
        let covered = format!("{info}40 22 0:32 / /sys/fs/cgroup rw - cgroup2 none rw\n");
        assert_eq!(
            find_mount(&covered, "cgroup2", None).unwrap().1,
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(join(&mount, &root, "/other"), None);
        assert_eq!(join(&mount, "/", "/a/../../etc"), None);
        assert!(find_mount(info, "cgroup", Some("memory")).is_none());
    }
}
