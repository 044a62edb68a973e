//! `nsbypass hook STAGE`: from the runtime's state on stdin to setup or
//! teardown.
//!
//! A container that asks for nothing must cost nothing, so the order is:
//! read stdin, read `config.json` as bytes, and leave unless it mentions
//! nsbypass. Only then parse, load the config, start logging, and work.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::ValueEnum;
use nsutil::ns::{self, Netns, NetnsId};
use runtime_config::bundle::{self, mentions_nsbypass};
use runtime_config::{Bundle, Config, Request, State};

use crate::failure::{Failure, Step, StepExt};
use crate::kernel::{RealKernel, RealReach};
use crate::records::{ProfilesRecord, StateDir};
use crate::{logging, profile, setup, teardown};

/// OCI hook stages, named as in the runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "verbatim")]
pub enum Stage {
    #[value(name = "prestart")]
    Prestart,
    #[value(name = "createRuntime")]
    CreateRuntime,
    #[value(name = "createContainer")]
    CreateContainer,
    #[value(name = "startContainer")]
    StartContainer,
    #[value(name = "poststart")]
    Poststart,
    #[value(name = "poststop")]
    Poststop,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::CreateContainer => "createContainer",
            Stage::StartContainer => "startContainer",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }
}

/// A hook run that failed: the container (once known) and the failed step.
#[derive(Debug)]
pub struct HookError {
    pub container: Option<String>,
    pub failure: Failure,
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(container) = &self.container {
            write!(f, "container {container}: ")?;
        }
        write!(f, "{}", self.failure)
    }
}

/// Runs one hook invocation with `stdin` as the state document.
pub fn run(stage: Stage, config_path: &Path, stdin: impl Read) -> Result<(), HookError> {
    let started = Instant::now();
    let anonymous = |failure: Failure| HookError {
        container: None,
        failure,
    };
    // Read the state even when the stage has nothing to do: a runtime
    // writing it to a hook that already exited would see EPIPE.
    let mut input = Vec::new();
    stdin
        .take(runtime_config::state::MAX_STATE_BYTES as u64 + 1)
        .read_to_end(&mut input)
        .step(Step::ReadState)
        .map_err(anonymous)?;
    let setup_stage = match stage {
        Stage::Prestart | Stage::CreateRuntime => true,
        Stage::Poststop => false,
        Stage::CreateContainer | Stage::StartContainer | Stage::Poststart => return Ok(()),
    };
    let state = State::parse(&input)
        .step(Step::ReadState)
        .map_err(anonymous)?;
    let id = state.id.clone();
    let with_container = |failure: Failure| HookError {
        container: Some(id.clone()),
        failure,
    };

    let spec = bundle::read_spec_bytes(&state.bundle);
    if setup_stage {
        let spec = spec.step(Step::ReadSpec).map_err(with_container)?;
        if !mentions_nsbypass(&spec) {
            return Ok(());
        }
        let bundle = Bundle::parse(&state.bundle, &spec)
            .step(Step::ReadSpec)
            .map_err(with_container)?;
        let request = Request::from_bundle(&bundle)
            .step(Step::ReadRequest)
            .map_err(with_container)?;
        if request.is_empty() {
            return Ok(());
        }
        let config = prepare(config_path).map_err(with_container)?;
        let done = run_setup(&state, &bundle, &request, &config).map_err(with_container)?;
        tracing::info!(
            container = %state.id,
            stage = stage.name(),
            networks = %request.networks.join(","),
            wired = %done.wired.iter().map(describe).collect::<Vec<_>>().join("; "),
            profiles = %done.profiles.join(","),
            elapsed_us = started.elapsed().as_micros() as u64,
            "setup done"
        );
    } else {
        // A spec that never asked for anything needs no teardown, unless a
        // record says otherwise (the bundle was edited or is gone).
        let asked = !matches!(&spec, Ok(bytes) if !mentions_nsbypass(bytes));
        if !asked && !recorded(config_path, &state.id) {
            return Ok(());
        }
        let config = prepare(config_path).map_err(with_container)?;
        let Some(released) = run_teardown(&state.id, &config).map_err(with_container)? else {
            tracing::debug!(container = %state.id, "nothing recorded for this container");
            return Ok(());
        };
        tracing::info!(
            container = %state.id,
            stage = stage.name(),
            released = %released
                .iter()
                .map(|r| format!("{} {} {}", r.network, r.ifname, addresses(&r.addresses)))
                .collect::<Vec<_>>()
                .join("; "),
            elapsed_us = started.elapsed().as_micros() as u64,
            "teardown done"
        );
    }
    Ok(())
}

/// Whether setup left a record for `container`. Without a usable config
/// nothing can have been set up, so the answer is no.
fn recorded(config_path: &Path, container: &str) -> bool {
    Config::load(config_path).is_ok_and(|c| StateDir::has_container(&c.state_dir, container))
}

/// Config, logging and privileges: what every working run needs first.
fn prepare(config_path: &Path) -> Result<Config, Failure> {
    let config = Config::load(config_path).step(Step::LoadConfig)?;
    logging::init(&config.log).step(Step::OpenLog)?;
    check_capabilities()?;
    Ok(config)
}

/// What one setup did, for the log line.
struct Done {
    wired: Vec<setup::Wired>,
    profiles: Vec<String>,
}

fn run_setup(
    state: &State,
    bundle: &Bundle,
    request: &Request,
    config: &Config,
) -> Result<Done, Failure> {
    let pid = state.pid.ok_or_else(|| {
        Failure::new(
            Step::OpenNamespace,
            format!(
                "state has no pid (status {:?}); register nsbypass for prestart or createRuntime",
                state.status
            ),
        )
    })?;
    // Everything the profiles need is opened and checked before anything changes.
    let to_carry = request.profiles_to_carry();
    let profiles = match to_carry.is_empty() {
        true => None,
        false => {
            let rootfs = bundle
                .root
                .clone()
                .ok_or_else(|| Failure::new(Step::OpenRootfs, "config.json has no root.path"))?;
            Some((profile::plan(&to_carry, config)?, rootfs))
        }
    };
    let mut target = match request.networks.is_empty() {
        true => None,
        false => Some(NetworkTarget::open(bundle, pid)?),
    };
    let state_dir = StateDir::lock(&config.state_dir).step(Step::LockState)?;
    tracing::debug!("state locked");
    let mut leases = state_dir.leases();

    let mut done = Done {
        wired: Vec::new(),
        profiles: Vec::new(),
    };
    if let Some(target) = &mut target {
        let host_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        let ctx = setup::Context {
            container: &state.id,
            host_id: host_id.trim(),
            netns: target.netns,
            process: target.process.clone(),
            pinned: target.pinned.clone(),
            request,
            config,
        };
        let mut stores = setup::Stores {
            state: &state_dir,
            leases: &mut leases,
            reach: &mut RealReach,
        };
        done.wired = setup::setup(&ctx, &mut target.kernel, &mut stores)?;
    }
    if let Some((plan, rootfs)) = profiles {
        if let Err(mut failure) = carry_profiles(&state.id, &plan, pid, &rootfs, &state_dir) {
            // Undo the networks this setup wired, as a poststop would.
            if target.is_some() {
                if let Err(e) =
                    teardown::teardown(&state.id, &mut RealReach, &state_dir, &mut leases)
                {
                    failure.message = format!("{} (rollback: {e})", failure.message);
                }
            }
            return Err(failure);
        }
        done.profiles = plan.names;
    }
    Ok(done)
}

/// Applies the profiles unless this container instance has them already,
/// and records them; undoes them if recording fails.
fn carry_profiles(
    container: &str,
    plan: &profile::Plan,
    pid: i32,
    rootfs: &Path,
    state_dir: &StateDir,
) -> Result<(), Failure> {
    let mut record = state_dir
        .container(container)
        .step(Step::ReadRecords)?
        .unwrap_or_default();
    let mntns = nsutil::ns::Mntns::open(Path::new(&format!("/proc/{pid}/ns/mnt")))
        .step(Step::OpenRootfs)?
        .id()
        .ino;
    let already = record.profiles.as_ref().is_some_and(|p| {
        p.pid == pid && p.mntns == mntns && plan.names.iter().all(|n| p.names.contains(n))
    });
    if already {
        return Ok(());
    }
    let scratch = state_dir.scratch().step(Step::Preload)?;
    let applied = profile::apply(plan, pid, rootfs, &scratch)?;
    record.profiles = Some(ProfilesRecord {
        pid,
        mntns,
        names: plan.names.clone(),
    });
    if let Err(e) = state_dir.put_container(container, &record) {
        let mut failure = Failure::new(Step::WriteRecord, e);
        let problems = applied.roll_back();
        if !problems.is_empty() {
            failure.message = format!("{} (rollback: {})", failure.message, problems.join("; "));
        }
        return Err(failure);
    }
    Ok(())
}

/// The container's own network namespace, and netlink into it.
struct NetworkTarget {
    kernel: RealKernel,
    netns: NetnsId,
    process: PathBuf,
    pinned: Option<PathBuf>,
}

impl NetworkTarget {
    fn open(bundle: &Bundle, pid: i32) -> Result<NetworkTarget, Failure> {
        let process = ns::pid_path(pid);
        let netns = Netns::open(&process).step(Step::OpenNamespace)?;
        let home = Netns::current().step(Step::OpenNamespace)?;
        if netns.id() == home.id() {
            return Err(Failure::new(
                Step::OpenNamespace,
                "the container shares the host's network namespace; nsbypass needs it to have its own",
            ));
        }
        // The spec's path is recorded as a second way back in only if it
        // leads to this very namespace.
        let id = netns.id();
        let pinned = bundle
            .netns_path
            .clone()
            .filter(|p| ns::id_of(p).is_ok_and(|found| found == id));
        let kernel = RealKernel::new(netns).step(Step::OpenNamespace)?;
        tracing::debug!(netns = %id, "netlink open in host and container namespaces");
        Ok(NetworkTarget {
            kernel,
            netns: id,
            process,
            pinned,
        })
    }
}

fn run_teardown(
    container: &str,
    config: &Config,
) -> Result<Option<Vec<teardown::Released>>, Failure> {
    if !config.state_dir.exists() {
        return Ok(None);
    }
    let state_dir = StateDir::lock(&config.state_dir).step(Step::LockState)?;
    let mut leases = state_dir.leases();
    teardown::teardown(container, &mut RealReach, &state_dir, &mut leases)
}

/// Network setup needs CAP_NET_ADMIN; entering another namespace needs
/// CAP_SYS_ADMIN. Say so up front instead of failing halfway with EPERM.
fn check_capabilities() -> Result<(), Failure> {
    use caps::{CapSet, Capability};
    let effective = caps::read(None, CapSet::Effective).step(Step::CheckCapabilities)?;
    let missing: Vec<&str> = [
        (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(cap, _)| !effective.contains(cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        Step::CheckCapabilities,
        format!(
            "nsbypass needs CAP_NET_ADMIN and CAP_SYS_ADMIN but lacks {}; run it as root from the runtime's hooks",
            missing.join(" and ")
        ),
    ))
}

fn describe(w: &setup::Wired) -> String {
    format!(
        "{} {} {} {}{}",
        w.network,
        w.ifname,
        w.mac,
        addresses(&w.addresses),
        if w.shared { " (shared)" } else { "" }
    )
}

fn addresses(list: &[ipnet::IpNet]) -> String {
    if list.is_empty() {
        return "l2-only".to_owned();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
