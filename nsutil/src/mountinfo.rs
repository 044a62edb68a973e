//! Mount tables, read from `/proc/<pid>/mountinfo`, and mount ids.
//!
//! Used to decide, before anything is mounted, whether a mount would
//! propagate (a target on a shared mount reaches every peer, the host's
//! included), whether a filesystem belongs to the container alone, and
//! which mounts sit below a directory that is about to be overlaid.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One line of a mountinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// `major:minor` of the filesystem (`st_dev`).
    pub dev: (u32, u32),
    /// What of the filesystem is mounted (for nsfs: `net:[INODE]`).
    pub root: String,
    /// The mount point, as the reading process's namespace sees it.
    pub point: PathBuf,
    /// The peer group it shares mount events with, if it is shared.
    pub shared: Option<u64>,
    /// The peer group it receives mount events from, if it is a slave.
    pub master: Option<u64>,
    pub fstype: String,
}

/// The mount table of `pid`'s mount namespace (`"self"` for the caller's).
pub fn read(pid: &str) -> Result<Vec<MountEntry>> {
    if pid == "self" {
        // The calling thread's, also from inside a container's mount
        // namespace (see procfs).
        return Ok(parse(&crate::procfs::own_mountinfo()?));
    }
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::new(format!("read {path}"), e))?;
    Ok(parse(&text))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent maj:min root point options [optional...] - fstype source super
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(fields.next()?);
    let point = PathBuf::from(unescape(fields.next()?));
    let _options = fields.next()?;
    let mut shared = None;
    let mut master = None;
    for field in fields.by_ref() {
        if field == "-" {
            break;
        }
        if let Some(group) = field.strip_prefix("shared:") {
            shared = group.parse().ok();
        } else if let Some(group) = field.strip_prefix("master:") {
            master = group.parse().ok();
        }
    }
    let fstype = fields.next()?.to_owned();
    Some(MountEntry {
        id,
        parent,
        dev,
        root,
        point,
        shared,
        master,
        fstype,
    })
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
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

/// The id of the mount `fd` lies on (the topmost mount at its path).
pub fn mount_id(fd: BorrowedFd) -> Result<u64> {
    // SAFETY: statx writes at most size_of::<statx>() bytes into `buf`,
    // which we own, and reads the empty path.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut buf,
        )
    };
    if rc < 0 {
        return Err(Error::new("statx", std::io::Error::last_os_error()));
    }
    if buf.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(Error::new(
            "statx",
            std::io::Error::other("the kernel reports no mount id"),
        ));
    }
    Ok(buf.stx_mnt_id)
}

/// The filesystems (`st_dev`) mounted anywhere in `table`.
pub fn devices(table: &[MountEntry]) -> HashSet<(u32, u32)> {
    table.iter().map(|m| m.dev).collect()
}

/// The mounts that sit directly on the mount `parent` somewhere below the
/// directory `dir` (both as `table`'s namespace sees them): what an overlay
/// of `dir` would hide. Nested mounts go along with these.
pub fn children_below<'a>(table: &'a [MountEntry], parent: u64, dir: &Path) -> Vec<&'a MountEntry> {
    table
        .iter()
        .filter(|m| {
            m.parent == parent && m.id != parent && m.point != dir && m.point.starts_with(dir)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
80 25 254:0 /srv/vol /data\\040x rw master:3 - ext4 /dev/vda rw
81 25 0:44 / /r/etc/hosts rw shared:7 master:3 - tmpfs tmpfs rw
";

    #[test]
    fn parses_ids_devices_points_and_propagation() {
        let t = parse(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].shared, Some(1));
        assert_eq!(
            (t[2].point.as_path(), t[2].master),
            (Path::new("/data x"), Some(3))
        );
        assert_eq!((t[3].shared, t[3].master), (Some(7), Some(3)));
        assert_eq!(t[3].dev, (0, 44));
        assert_eq!(t[3].fstype, "tmpfs");
        assert_eq!(t[2].root, "/srv/vol");
        assert!(devices(&t).contains(&(254, 0)));
        let below: Vec<_> = children_below(&t, 25, Path::new("/r/etc"))
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(below, [81]);
        assert!(children_below(&t, 25, Path::new("/r")).len() == 1);
    }

    #[test]
    fn our_own_root_is_in_our_table() {
        let table = read("self").unwrap();
        let root = std::fs::File::open("/").unwrap();
        use std::os::fd::AsFd;
        let id = mount_id(root.as_fd()).unwrap();
        assert!(table
            .iter()
            .any(|m| m.id == id && m.point == Path::new("/")));
    }
}
