//! Teardown: a container leaves its namespace; links no remaining member
//! wants are deleted and their addresses released.
//!
//! Works from records alone (poststop has no pid). A namespace that is
//! gone took its links with it, so only the leases remain to free; one
//! that lives on where no recorded path leads, or that the kernel is still
//! destroying, keeps its links, and so its leases, until it is gone: the
//! record stays without members, and a later reclaim or gc frees them.
//! Teardown never waits for the kernel. A poststop whose container still runs is not
//! that container's (two runtimes used one id): it changes nothing.
//! Errors are collected and teardown keeps going; whatever could not be
//! undone stays recorded, so running teardown again retries exactly that.

use ipnet::IpNet;

use crate::failure::{Failure, Step, StepExt};
use crate::kernel::{self, Kernel, Presence};
use crate::reconcile::{self, Stores};
use crate::records::LinkRecord;

/// A link teardown removed (or found gone with its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub network: String,
    pub ifname: String,
    pub addresses: Vec<IpNet>,
}

/// What a teardown found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was recorded for the container (never set up, or already
    /// torn down).
    NotRecorded,
    /// The recorded container still runs: this teardown is not for it.
    StillRunning,
    /// The container left; `released` links went, `kept` links stay
    /// leased because their namespace lives on out of reach or is still
    /// being destroyed (they drain: see [`reconcile::await_draining`]).
    Left {
        released: Vec<Released>,
        kept: Vec<Released>,
    },
}

/// How hard teardown looks for a namespace no recorded path reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Through an engine's bind mount only, then whether it is gone (its
    /// id and its links' MACs, a few netlink requests); otherwise it
    /// drains, dying or kept out of reach alike: with node-local leases, a
    /// later run on this host frees it, and a poststop right after the
    /// container's death (the usual case) skips the walk over every
    /// process and fd on the host (about 2 ms here).
    Quick,
    /// Through the host's namespace ids, the links' MACs and every process
    /// and fd ([`kernel::presence`]): with leases other nodes want (etcd),
    /// a namespace that is gone frees its addresses at once.
    Full,
}

/// Why a container leaves its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Its runtime says it stopped (poststop): if it still runs, this
    /// teardown is for another container with its id, and does nothing.
    Stopped,
    /// The operator says so (`nsbypass detach`): whether it runs does not
    /// matter.
    Detached,
}

/// Removes `container` from its namespace record and undoes what only it
/// needed.
pub fn teardown(container: &str, stores: &mut Stores) -> Result<Outcome, Failure> {
    leave(container, stores, Leaving::Stopped, Look::Full)
}

/// Like [`teardown`], for `leaving`.
pub fn leave(
    container: &str,
    stores: &mut Stores,
    leaving: Leaving,
    look: Look,
) -> Result<Outcome, Failure> {
    let Some(pointer) = stores.state.container(container).step(Step::ReadRecords)? else {
        return Ok(Outcome::NotRecorded);
    };
    let left = || Outcome::Left {
        released: Vec::new(),
        kept: Vec::new(),
    };
    let Some(key) = pointer.netns.as_deref() else {
        // Profiles only: mounts and device grants died with the container.
        stores
            .state
            .remove_container(container)
            .step(Step::WriteRecord)?;
        return Ok(left());
    };
    let Some(record) = stores.state.netns(key).step(Step::ReadRecords)? else {
        stores
            .state
            .remove_container(container)
            .step(Step::WriteRecord)?;
        return Ok(left());
    };
    if let Some(member) = record.members.get(container) {
        if leaving == Leaving::Stopped && kernel::alive(stores.reach, member, record.id()) {
            tracing::warn!(
                container,
                netns = %record.id(),
                "teardown for a container that still runs: another container with this id? leaving it alone"
            );
            return Ok(Outcome::StillRunning);
        }
    }

    let key = record.key();
    // Through every recorded path, the leaving container's included: in a
    // pod it may be the only one still valid.
    let presence = match look {
        Look::Full => kernel::presence(stores.reach, &record),
        Look::Quick => match kernel::reachable(stores.reach, &record) {
            Ok(Some(kernel)) => Ok(Presence::Reachable(kernel)),
            Ok(None) => kernel::gone(stores.reach, &record).map(|gone| {
                if gone {
                    Presence::Gone
                } else {
                    Presence::Unreachable
                }
            }),
            Err(e) => Err(e),
        },
    };
    let presence = match presence.step(Step::OpenNamespace) {
        Ok(p) => p,
        Err(failure) => return keep_for_retry(container, record, vec![failure], stores),
    };
    // Being destroyed (or out of reach, which right after its last process
    // exited means the same): its links still answer for their addresses
    // for some tens of milliseconds, on a kernel workqueue. Waiting for it
    // here would make every poststop pay for it; the leases drain instead.
    if matches!(presence, Presence::Dying | Presence::Unreachable) {
        let kept = record.links.iter().map(released_of).collect();
        let (record, _) = reconcile::settle(record, presence, stores)?;
        if record.members.is_empty() && !record.links.is_empty() {
            stores.state.mark_draining(&key).step(Step::WriteRecord)?;
        }
        stores.state.put_netns(&record).step(Step::WriteRecord)?;
        stores
            .state
            .remove_container(container)
            .step(Step::WriteRecord)?;
        tracing::debug!(container, netns = %record.id(), "the namespace is being destroyed; its addresses drain");
        return Ok(Outcome::Left {
            released: Vec::new(),
            kept,
        });
    }
    if matches!(presence, Presence::Gone) {
        // The namespace took its links with it; settle frees their leases.
        let released = record.links.iter().map(released_of).collect();
        let (record, _) = reconcile::settle(record, presence, stores)?;
        stores.state.put_netns(&record).step(Step::WriteRecord)?;
        stores
            .state
            .remove_container(container)
            .step(Step::WriteRecord)?;
        return Ok(Outcome::Left {
            released,
            kept: Vec::new(),
        });
    }
    let (mut record, mut kernel) = reconcile::settle(record, presence, stores)?;
    record.members.remove(container);
    let wanted: Vec<String> = record
        .wanted_networks()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (keep, unwanted): (Vec<_>, Vec<_>) = std::mem::take(&mut record.links)
        .into_iter()
        .partition(|l| wanted.contains(&l.network));
    record.links = keep;

    let mut released = Vec::new();
    let mut kept = Vec::new();
    let mut failures = Vec::new();
    for link in unwanted {
        let done = released_of(&link);
        match &mut kernel {
            Some(kernel) => match remove_link(&link, kernel.as_mut(), stores, &key) {
                Ok(()) => released.push(done),
                Err(failure) => {
                    failures.push(failure);
                    record.links.push(link);
                }
            },
            // Out of reach but alive: the link and its address live on.
            None => {
                tracing::warn!(
                    container,
                    network = %link.network,
                    "the namespace lives on where no recorded path leads; its address stays leased until it is gone"
                );
                kept.push(done);
                record.links.push(link);
            }
        }
    }

    if !failures.is_empty() {
        return keep_for_retry(container, record, failures, stores);
    }
    stores.state.put_netns(&record).step(Step::WriteRecord)?;
    stores
        .state
        .remove_container(container)
        .step(Step::WriteRecord)?;
    Ok(Outcome::Left { released, kept })
}

/// Writes `record` back with `container` still a member (so a second
/// teardown retries what is left) and reports the failures.
fn keep_for_retry(
    container: &str,
    mut record: crate::records::NetnsRecord,
    mut failures: Vec<Failure>,
    stores: &mut Stores,
) -> Result<Outcome, Failure> {
    if let Ok(Some(on_disk)) = stores.state.netns(&record.key()) {
        if let Some(member) = on_disk.members.get(container) {
            record.members.insert(container.to_owned(), member.clone());
        }
    }
    let first = failures.remove(0);
    let written = stores.state.put_netns(&record).step(Step::WriteRecord);
    for failure in &failures {
        tracing::error!(container, %failure, "teardown step failed");
    }
    let mut first = first.with_rollback(failures);
    if let Err(e) = written {
        first.rollback.push(e);
    }
    Err(first)
}

fn released_of(link: &LinkRecord) -> Released {
    Released {
        network: link.network.clone(),
        ifname: link.ifname.clone(),
        addresses: link.addresses.clone(),
    }
}

/// Deletes one link (found by its index, which survives renames and MAC
/// changes) and frees its addresses, only once the link is surely gone.
pub(crate) fn remove_link(
    link: &LinkRecord,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
    key: &str,
) -> Result<(), Failure> {
    let network = link.network.as_str();
    if let Some(index) = link.index {
        let found = kernel
            .link_by_index(index)
            .step_on(Step::DeleteLink, network)?;
        if found.as_ref().is_some_and(|l| link.is(l)) {
            if link.guard.is_some() {
                kernel
                    .unguard_link(&link.ifname)
                    .step_on(Step::Unguard, network)?;
            }
            kernel.delete(index).step_on(Step::DeleteLink, network)?;
        }
    }
    stores.release_link(key, link)
}
