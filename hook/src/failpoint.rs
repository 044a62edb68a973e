//! Failpoints: named places in setup where a test can make the hook fail
//! or die, to prove that every step's rollback works and that a SIGKILL at
//! any step leaves state the next run repairs.
//!
//! Compiled in only with the `failpoints` feature (the test suite's build)
//! and in unit tests; in every other build [`hit`] is an empty inline
//! function and the environment is never read.
//!
//! `NSBYPASS_FAILPOINT=NAME=ACTION[,NAME=ACTION...]` arms them for one
//! process, where ACTION is `error` (the step fails), `kill` (the process
//! SIGKILLs itself, as a runtime's hook timeout would) or `sleep-MS`. The
//! variable comes from the hook definition the test writes, never from a
//! container. Unit tests arm them per thread with [`arm`], and have one
//! more action, `panic`: unwinding past the undo log leaves state exactly
//! as a SIGKILL would.

/// Every failpoint, in setup order; tests iterate over this list.
#[cfg(any(test, feature = "failpoints"))]
pub const ALL: &[&str] = &[
    "lease",
    "assign-nsid",
    "write-intent",
    "write-pointer",
    "create-link",
    "rename-link",
    "arp-notify",
    "ndisc-notify",
    "add-address",
    "guard-link",
    "guard-parent",
    "link-up",
    "add-route",
    "write-final",
    "shim-lease",
    "shim-write-intent",
    "shim-create",
    "shim-arp-notify",
    "shim-add-address",
    "shim-link-up",
    "shim-add-route",
    "shim-write-final",
    "shim-delete",
    "profile-clone",
    "profile-lockdown",
    "profile-target",
    "profile-overlay",
    "profile-preload",
    "profile-attach",
    "profile-bpffs",
    "profile-grant",
    "profile-record",
    // Teardown: between removing an empty namespace record and its pod
    // index entries (see StateDir::put_netns).
    "remove-record",
];

/// The error an armed `error` failpoint returns.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {0}: injected failure")]
pub struct Injected(pub &'static str);

#[cfg(any(test, feature = "failpoints"))]
mod armed {
    use std::cell::RefCell;
    use std::sync::OnceLock;

    thread_local! {
        /// Unit tests arm failpoints per thread (tests run in parallel).
        static LOCAL: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
    }

    fn from_env() -> &'static [(String, String)] {
        static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
        ENV.get_or_init(|| {
            std::env::var("NSBYPASS_FAILPOINT")
                .unwrap_or_default()
                .split(',')
                .filter_map(|item| item.split_once('='))
                .map(|(n, a)| (n.trim().to_owned(), a.trim().to_owned()))
                .collect()
        })
    }

    pub fn action(name: &str) -> Option<String> {
        let local = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let at = l.iter().position(|(n, _)| n == name)?;
            Some(l.remove(at).1)
        });
        local.or_else(|| {
            from_env()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a.clone())
        })
    }

    /// Arms `name` once for the calling thread (unit tests).
    #[cfg(test)]
    pub fn arm(name: &str, action: &str) {
        LOCAL.with(|l| l.borrow_mut().push((name.to_owned(), action.to_owned())));
    }

    /// Disarms every failpoint of the calling thread.
    #[cfg(test)]
    pub fn disarm() {
        LOCAL.with(|l| l.borrow_mut().clear());
    }
}

#[cfg(test)]
pub use armed::{arm, disarm};

/// Passes unless the failpoint `name` is armed.
#[cfg(any(test, feature = "failpoints"))]
pub fn hit(name: &'static str) -> Result<(), Injected> {
    debug_assert!(ALL.contains(&name), "unlisted failpoint {name}");
    match armed::action(name).as_deref() {
        None => Ok(()),
        Some("kill") => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL returned")
        }
        Some("panic") => panic!("failpoint {name}: simulated kill"),
        Some(sleep) if sleep.starts_with("sleep-") => {
            let ms = sleep["sleep-".len()..].parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        Some(_) => Err(Injected(name)),
    }
}

#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_name: &'static str) -> Result<(), Injected> {
    Ok(())
}
