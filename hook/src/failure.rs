//! The one line a failing hook prints: which step, which network or
//! profile, why, and what could not be undone.
//!
//! A [`Failure`] keeps its cause as a typed error (a kernel call, a lease,
//! a record, a config key) so callers can still ask what went wrong (an
//! errno, say), and keeps every rollback error as a failure of its own
//! rather than folding them into a string.

use std::error::Error as StdError;
use std::fmt;

/// The most a failure line may hold. A request value is the user's: a
/// 15 MiB annotation must not become a 15 MiB line on the runtime's stderr.
pub const MAX_LINE: usize = 4096;

/// The hook's steps, in the order setup takes them. The name appears in
/// every error line so an operator knows how far the hook got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadState,
    ReadSpec,
    ReadRequest,
    LoadConfig,
    Policy,
    OpenLog,
    CheckCapabilities,
    ReadMachineId,
    OpenNamespace,
    LockState,
    ReadRecords,
    Validate,
    AssignNsid,
    LeaseAddress,
    CreateLink,
    RenameLink,
    ArpNotify,
    NdiscNotify,
    AddAddress,
    /// The address guard's filter in the container's namespace.
    GuardLink,
    /// The address guard's keys on the parent, in the host's namespace.
    GuardParent,
    /// Removing either.
    Unguard,
    LinkUp,
    AddRoute,
    WriteRecord,
    OpenRootfs,
    Preload,
    Mount,
    /// A fresh bpffs at the container's /sys/fs/bpf.
    Bpffs,
    /// The container's process has what its profiles need (capabilities, rlimits).
    CheckProcess,
    GrantDevices,
    DeleteLink,
    ReleaseAddress,
    /// A step of making or removing a network's host shim.
    Shim(crate::shim::ShimStep),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReadState => "read state",
            Step::ReadSpec => "read config.json",
            Step::ReadRequest => "read request",
            Step::LoadConfig => "load config",
            Step::Policy => "policy",
            Step::OpenLog => "open log",
            Step::CheckCapabilities => "check capabilities",
            Step::ReadMachineId => "read machine id",
            Step::OpenNamespace => "open network namespace",
            Step::LockState => "lock state",
            Step::ReadRecords => "read records",
            Step::Validate => "validate",
            Step::AssignNsid => "assign namespace id",
            Step::LeaseAddress => "lease address",
            Step::CreateLink => "create link",
            Step::RenameLink => "rename link",
            Step::ArpNotify => "set arp_notify",
            Step::NdiscNotify => "enable IPv6 and ndisc_notify",
            Step::AddAddress => "add address",
            Step::GuardLink => "guard link",
            Step::GuardParent => "guard parent",
            Step::Unguard => "remove guard",
            Step::LinkUp => "set link up",
            Step::AddRoute => "add route",
            Step::WriteRecord => "write record",
            Step::OpenRootfs => "open rootfs",
            Step::Preload => "write ld.so.preload",
            Step::Mount => "mount",
            Step::Bpffs => "mount bpffs",
            Step::CheckProcess => "check process",
            Step::GrantDevices => "grant devices",
            Step::DeleteLink => "delete link",
            Step::ReleaseAddress => "release address",
            Step::Shim(step) => step.name(),
        })
    }
}

/// What a step worked on, when it was one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Network(String),
    Profile(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Network(n) => write!(f, "network {n}"),
            Subject::Profile(p) => write!(f, "profile {p}"),
        }
    }
}

/// The cause of a failure: any error, kept with its type.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// A failed step.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub subject: Option<Subject>,
    pub cause: Cause,
    /// What undoing the steps before it could not undo, newest first.
    pub rollback: Vec<Failure>,
}

/// A cause that is only a sentence (a validation refusal).
#[derive(Debug)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Refusal {}

impl Failure {
    pub fn new(step: Step, cause: impl Into<Cause>) -> Failure {
        Failure {
            step,
            subject: None,
            cause: cause.into(),
            rollback: Vec::new(),
        }
    }

    /// A refusal: `message` is the whole cause.
    pub fn refuse(step: Step, message: impl Into<String>) -> Failure {
        Failure::new(step, Refusal(message.into()))
    }

    /// A failure on one network.
    pub fn on(step: Step, network: &str, cause: impl Into<Cause>) -> Failure {
        Failure::new(step, cause).subject(Subject::Network(network.to_owned()))
    }

    /// A failure on one profile.
    pub fn profile(step: Step, profile: &str, cause: impl Into<Cause>) -> Failure {
        Failure::new(step, cause).subject(Subject::Profile(profile.to_owned()))
    }

    pub fn subject(mut self, subject: Subject) -> Failure {
        self.subject = Some(subject);
        self
    }

    /// Adds what a rollback could not undo.
    pub fn with_rollback(mut self, problems: Vec<Failure>) -> Failure {
        self.rollback.extend(problems);
        self
    }

    /// The errno behind the failure, if the kernel gave one.
    #[cfg(test)]
    pub fn errno(&self) -> Option<i32> {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(self.cause.as_ref());
        while let Some(e) = cause {
            if let Some(e) = e.downcast_ref::<nsutil::Error>() {
                return e.errno();
            }
            if let Some(e) = e.downcast_ref::<std::io::Error>() {
                return e.raw_os_error();
            }
            cause = e.source();
        }
        None
    }

    /// The message alone, without step and subject.
    pub fn cause_text(&self) -> String {
        one_line(&self.cause.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        if let Some(subject) = &self.subject {
            line.push_str(&format!("{subject}: "));
        }
        // Messages from the kernel or from parsers may span lines; the
        // contract is one line per failure.
        line.push_str(&format!("{}: {}", self.step, self.cause_text()));
        if !self.rollback.is_empty() {
            let undone: Vec<String> = self.rollback.iter().map(ToString::to_string).collect();
            line.push_str(&format!(" (rollback: {})", undone.join("; ")));
        }
        f.write_str(&bounded(&line, MAX_LINE))
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// "no such network in FILE (configured: a, b)": a request named something
/// the config does not define.
pub fn no_such<'a>(
    what: &str,
    config: &std::path::Path,
    known: impl Iterator<Item = &'a String>,
) -> Refusal {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    Refusal(format!(
        "no such {what} in {} (configured: {known})",
        config.display()
    ))
}

/// Collapses line breaks so a message stays on one line.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `text`, cut at a character boundary to at most `max` bytes, saying so.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let marker = format!(" ... ({} bytes cut)", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// A step mapping for `Result`s, so call sites read `.step(Step::X)?`.
pub trait StepExt<T> {
    fn step(self, step: Step) -> Result<T, Failure>;
    fn step_on(self, step: Step, network: &str) -> Result<T, Failure>;
}

impl<T, E: Into<Cause>> StepExt<T> for Result<T, E> {
    fn step(self, step: Step) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(step, e))
    }

    fn step_on(self, step: Step, network: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::on(step, network, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_line_names_network_step_and_cause_on_one_line() {
        let f = Failure::on(
            Step::AddRoute,
            "fast",
            Refusal("add route default via 10.0.0.1:\nFile exists".into()),
        );
        assert_eq!(
            f.to_string(),
            "network fast: add route: add route default via 10.0.0.1:; File exists"
        );
        assert_eq!(
            Failure::refuse(Step::ReadState, "bad").to_string(),
            "read state: bad"
        );
    }

    #[test]
    fn rollback_errors_are_listed_and_the_cause_keeps_its_type() {
        let kernel = nsutil::Error::new(
            "delete link 7",
            std::io::Error::from_raw_os_error(nix::errno::Errno::EBUSY as i32),
        );
        let f = Failure::on(Step::AddAddress, "fast", Refusal("no".into())).with_rollback(vec![
            Failure::on(Step::DeleteLink, "fast", kernel),
            Failure::refuse(Step::ReleaseAddress, "gone"),
        ]);
        assert_eq!(
            f.to_string(),
            "network fast: add address: no (rollback: network fast: delete link: delete link 7: \
             Device or resource busy (os error 16); release address: gone)"
        );
        assert_eq!(f.rollback[0].errno(), Some(nix::errno::Errno::EBUSY as i32));
        assert_eq!(f.errno(), None);
    }

    #[test]
    fn a_huge_cause_is_cut_to_a_bounded_line() {
        let f = Failure::refuse(Step::ReadRequest, "x".repeat(15 << 20));
        let line = f.to_string();
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        assert!(line.ends_with(&format!("({} bytes cut)", 15 * 1024 * 1024 + 14)));
        // Multi-byte characters are never split.
        let cut = bounded(&"é".repeat(5000), 101);
        assert!(cut.len() <= 101 && cut.is_char_boundary(cut.find(' ').unwrap()));
    }
}
