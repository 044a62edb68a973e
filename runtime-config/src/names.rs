//! Names that end up in file paths or in the kernel: checked once, here.
//!
//! Container ids and network names become file names under the state
//! directory, and interface names go to the kernel, so each is held to a
//! character set that cannot escape a directory or confuse `ip`.

/// Longest interface name the kernel takes (IFNAMSIZ minus the NUL).
pub const IFNAMSIZ_MAX: usize = 15;

/// An interface name the kernel accepts: 1..=15 bytes, no `/`, `:`, or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > IFNAMSIZ_MAX {
        return Err(format!("{name:?} is longer than {IFNAMSIZ_MAX} bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a usable interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} may not contain {c:?}"));
    }
    Ok(())
}

/// A network name: letters, digits, `_`, `-`, `.`, not starting with `.`.
pub fn check_network_name(name: &str) -> Result<(), String> {
    check_word(name, "network name", 64, "_-.")
}

/// A Kubernetes namespace name (an RFC 1123 label: lowercase letters,
/// digits and `-`, at most 63, starting and ending alphanumeric), as
/// `allow_namespaces` lists them.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
        )),
    }
}

/// A Kubernetes pod name (an RFC 1123 subdomain: lowercase letters,
/// digits, `-` and `.`, at most 253, starting and ending alphanumeric),
/// as CRI-O and containerd copy it into `io.kubernetes.pod.name`.
pub fn check_pod_name(name: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a Kubernetes pod name (lowercase letters, digits, '-' and '.', at most 253)"
        )),
    }
}

/// A container id as runtimes make them (runc: `^[\w+-\.]+$`), minus `.`
/// and `..`, and short enough to be a file name with a suffix.
pub fn check_container_id(id: &str) -> Result<(), String> {
    check_word(id, "container id", 200, "_-.+")
}

fn check_word(s: &str, what: &str, max: usize, punctuation: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if s.starts_with('.') {
        return Err(format!("{what} {s:?} may not start with '.'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || punctuation.contains(*c)))
    {
        return Err(format!("{what} {s:?} may not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        assert!(check_ifname("net1").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\nb"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_ids() {
        assert!(check_container_id("3f2a9c_web-1.v2+x").is_ok());
        assert!(check_container_id(&"a".repeat(200)).is_ok());
        assert!(check_container_id(&"a".repeat(201)).is_err());
        assert!(check_network_name("a+b").is_err());
        for bad in ["", ".", "..", ".hidden", "a/b", "../../etc", "a b", "a\0b"] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pod_names() {
        for good in ["web-0", "a", "db.primary-1", &"a".repeat(253)] {
            assert!(check_pod_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Web-0",
            "-web",
            "web-",
            "web/0",
            "web 0",
            ".web",
            &"a".repeat(254),
        ] {
            assert!(check_pod_name(bad).is_err(), "{bad:?}");
        }
    }
}
