//! Teardown: a container leaves its namespace; links no remaining member
//! wants are deleted and their addresses released.
//!
//! Works from records alone (poststop has no pid). A namespace that is
//! already gone took its links with it, so only the leases remain to free.
//! Errors are collected and teardown keeps going; whatever could not be
//! undone stays recorded, so running teardown again retries exactly that.

use ipnet::IpNet;

use crate::failure::{Failure, Step, StepExt};
use crate::kernel::{self, Kernel, Reach};
use crate::lease::LeaseStore;
use crate::records::{LinkRecord, StateDir};

/// A link teardown removed (or found gone with its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub network: String,
    pub ifname: String,
    pub addresses: Vec<IpNet>,
}

/// Removes `container` from its namespace record and undoes what only it
/// needed. `None`: nothing was recorded for it (never set up, or already
/// torn down).
pub fn teardown(
    container: &str,
    reach: &mut dyn Reach,
    state: &StateDir,
    leases: &mut dyn LeaseStore,
) -> Result<Option<Vec<Released>>, Failure> {
    let Some(pointer) = state.container(container).step(Step::ReadRecords)? else {
        return Ok(None);
    };
    let Some(key) = pointer.netns.as_deref() else {
        // Profiles only: mounts and device grants died with the container.
        state.remove_container(container).step(Step::WriteRecord)?;
        return Ok(Some(Vec::new()));
    };
    let Some(mut record) = state.netns(key).step(Step::ReadRecords)? else {
        state.remove_container(container).step(Step::WriteRecord)?;
        return Ok(Some(Vec::new()));
    };
    let key = record.key();
    // Reach the namespace through every recorded path, the leaving
    // container's included: in a pod it may be the only one still valid.
    let reachable_via = record.clone();
    let leaving = record.members.remove(container);
    // Members whose init is gone without a poststop want nothing any more.
    let id = record.id();
    record
        .members
        .retain(|_, member| kernel::alive(reach, member, id));
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
    let mut failures = Vec::new();
    if !unwanted.is_empty() {
        let mut kernel = match kernel::reach(reach, &reachable_via) {
            Ok(kernel) => kernel,
            Err(e) => {
                failures.push(Failure::new(Step::OpenNamespace, e));
                None
            }
        };
        let namespace_gone = kernel.is_none() && failures.is_empty();
        for link in unwanted {
            match remove_link(&link, &mut kernel, namespace_gone, leases, &key) {
                Ok(()) => released.push(Released {
                    network: link.network.clone(),
                    ifname: link.ifname.clone(),
                    addresses: link.addresses.clone(),
                }),
                Err(failure) => {
                    failures.push(failure);
                    record.links.push(link);
                }
            }
        }
    }

    if failures.is_empty() {
        state.put_netns(&record).step(Step::WriteRecord)?;
        state.remove_container(container).step(Step::WriteRecord)?;
        return Ok(Some(released));
    }
    // Keep the container a member so a second teardown retries what is left.
    if let Some(member) = leaving {
        record.members.insert(container.to_owned(), member);
    }
    state.put_netns(&record).step(Step::WriteRecord)?;
    for failure in &failures {
        tracing::error!(container, %failure, "teardown step failed");
    }
    let count = failures.len();
    let mut first = failures.swap_remove(0);
    if count > 1 {
        first.message = format!(
            "{} (and {} more failures, see the log)",
            first.message,
            count - 1
        );
    }
    Err(first)
}

/// Deletes one link (found by its index, which survives renames and MAC
/// changes) and frees its addresses, only once the link is surely gone.
fn remove_link(
    link: &LinkRecord,
    kernel: &mut Option<Box<dyn Kernel>>,
    namespace_gone: bool,
    leases: &mut dyn LeaseStore,
    key: &str,
) -> Result<(), Failure> {
    let network = link.network.as_str();
    match kernel {
        Some(kernel) => {
            let present = kernel.links().step_on(Step::DeleteLink, network)?;
            if let Some(found) = link.find_in(&present) {
                kernel
                    .delete(found.index)
                    .step_on(Step::DeleteLink, network)?;
            }
        }
        None if namespace_gone => {}
        None => {
            return Err(Failure::on(
                Step::DeleteLink,
                network,
                "the namespace cannot be entered; keeping the address leased",
            ))
        }
    }
    for address in &link.addresses {
        leases
            .release(network, address.addr(), key)
            .step_on(Step::ReleaseAddress, network)?;
    }
    Ok(())
}
