//! The one line a failing hook prints: which step, which network, why.

use std::fmt;

/// The hook's steps, in the order setup takes them. The name appears in
/// every error line so an operator knows how far the hook got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadState,
    ReadSpec,
    ReadRequest,
    LoadConfig,
    OpenLog,
    CheckCapabilities,
    OpenNamespace,
    LockState,
    ReadRecords,
    Validate,
    LeaseAddress,
    CreateLink,
    RenameLink,
    ArpNotify,
    AddAddress,
    LinkUp,
    AddRoute,
    WriteRecord,
    OpenRootfs,
    Preload,
    Mount,
    GrantDevices,
    DeleteLink,
    ReleaseAddress,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReadState => "read state",
            Step::ReadSpec => "read config.json",
            Step::ReadRequest => "read request",
            Step::LoadConfig => "load config",
            Step::OpenLog => "open log",
            Step::CheckCapabilities => "check capabilities",
            Step::OpenNamespace => "open network namespace",
            Step::LockState => "lock state",
            Step::ReadRecords => "read records",
            Step::Validate => "validate",
            Step::LeaseAddress => "lease address",
            Step::CreateLink => "create link",
            Step::RenameLink => "rename link",
            Step::ArpNotify => "set arp_notify",
            Step::AddAddress => "add address",
            Step::LinkUp => "set link up",
            Step::AddRoute => "add route",
            Step::WriteRecord => "write record",
            Step::OpenRootfs => "open rootfs",
            Step::Preload => "write ld.so.preload",
            Step::Mount => "mount",
            Step::GrantDevices => "grant devices",
            Step::DeleteLink => "delete link",
            Step::ReleaseAddress => "release address",
        })
    }
}

/// A failed step. `subject` names what the step worked on, when it was
/// one thing: `network fast`, `profile onload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub subject: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn new(step: Step, message: impl fmt::Display) -> Failure {
        Failure {
            step,
            subject: None,
            message: message.to_string(),
        }
    }

    /// A failure on one network.
    pub fn on(step: Step, network: &str, message: impl fmt::Display) -> Failure {
        Failure {
            step,
            subject: Some(format!("network {network}")),
            message: message.to_string(),
        }
    }

    /// A failure on one profile.
    pub fn profile(step: Step, profile: &str, message: impl fmt::Display) -> Failure {
        Failure {
            step,
            subject: Some(format!("profile {profile}")),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        // Messages from the kernel or from parsers may span lines; the
        // contract is one line per failure.
        write!(f, "{}: {}", self.step, one_line(&self.message))
    }
}

impl std::error::Error for Failure {}

/// "no such network in FILE (configured: a, b)": a request named something
/// the config does not define.
pub fn no_such<'a>(
    what: &str,
    config: &std::path::Path,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    format!(
        "no such {what} in {} (configured: {known})",
        config.display()
    )
}

/// Collapses line breaks so a message stays on one line.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A step mapping for `Result`s, so call sites read `.step(Step::X)?`.
pub trait StepExt<T> {
    fn step(self, step: Step) -> Result<T, Failure>;
    fn step_on(self, step: Step, network: &str) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> StepExt<T> for Result<T, E> {
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
            "add route default via 10.0.0.1:\nFile exists",
        );
        assert_eq!(
            f.to_string(),
            "network fast: add route: add route default via 10.0.0.1:; File exists"
        );
        assert_eq!(
            Failure::new(Step::ReadState, "bad").to_string(),
            "read state: bad"
        );
    }
}
