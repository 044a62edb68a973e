//! `nsbypass hook STAGE`: from the runtime's state on stdin to setup or
//! teardown.
//!
//! A container that asks for nothing must cost nothing, so the order is:
//! read stdin, read `config.json` as bytes, and leave unless it mentions
//! nsbypass. Only then parse, load the config, start logging, and work.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use clap::ValueEnum;
use runtime_config::bundle::{self, mentions_nsbypass};
use runtime_config::{Bundle, Config, Request, State};

use crate::failure::{Failure, Step, StepExt};
use crate::node::{Done, Node, Target};
use crate::records::{Source, StateDir};
use crate::setup::{self, addresses};
use crate::teardown::{Outcome, Released};
use crate::{policy, profile};

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
        // Annotations first: they need no config. The environment counts
        // only where the admin says so, which takes the config to know.
        let request = Request::from_bundle(&bundle, false)
            .step(Step::ReadRequest)
            .map_err(with_container)?;
        if request.is_empty() && !Request::in_env(&bundle) {
            return Ok(());
        }
        let node = Node::open(config_path).map_err(with_container)?;
        let request = match node.config.requests.from_env {
            true => Request::from_bundle(&bundle, true)
                .step(Step::ReadRequest)
                .map_err(with_container)?,
            false => {
                if Request::in_env(&bundle) {
                    tracing::info!(
                        container = %state.id,
                        "NSBYPASS_* in the container's environment ignored: [requests] from_env is false"
                    );
                }
                request
            }
        };
        if request.is_empty() {
            return Ok(());
        }
        policy::check(&request, &node.config).map_err(with_container)?;
        let done = run_setup(&node, &state, &bundle, &request).map_err(with_container)?;
        tracing::info!(
            container = %state.id,
            stage = stage.name(),
            networks = %request.networks.join(","),
            wired = %done.wired.iter().map(describe).collect::<Vec<_>>().join("; "),
            profiles = %done.profiles.join(","),
            elapsed_us = started.elapsed().as_micros() as u64,
            locked_us = done.locked.as_micros() as u64,
            "setup done"
        );
    } else {
        // A spec that never asked for anything needs no teardown, unless a
        // record says otherwise (the bundle was edited or is gone).
        let asked = !matches!(&spec, Ok(bytes) if !mentions_nsbypass(bytes));
        if !asked && !recorded(config_path, &state.id) {
            return Ok(());
        }
        let node = Node::open(config_path).map_err(with_container)?;
        let outcome = node.teardown(&state.id).map_err(with_container)?;
        match outcome {
            Outcome::NotRecorded => {
                tracing::debug!(container = %state.id, "nothing recorded for this container");
            }
            Outcome::StillRunning => {}
            Outcome::Left { released, kept } => tracing::info!(
                container = %state.id,
                stage = stage.name(),
                released = %links(&released),
                kept = %links(&kept),
                elapsed_us = started.elapsed().as_micros() as u64,
                "teardown done"
            ),
        }
    }
    Ok(())
}

/// Whether setup left a record for `container`. Without a usable config
/// nothing can have been set up, so the answer is no.
fn recorded(config_path: &Path, container: &str) -> bool {
    Config::load(config_path).is_ok_and(|c| StateDir::has_container(&c.state_dir, container))
}

/// The hook's view of a container: its init's pid (there is one at
/// prestart and createRuntime) and the bundle's netns path and rootfs.
fn run_setup(
    node: &Node,
    state: &State,
    bundle: &Bundle,
    request: &Request,
) -> Result<Done, Failure> {
    let pid = state.pid.ok_or_else(|| {
        Failure::refuse(
            Step::OpenNamespace,
            format!(
                "state has no pid (status {:?}); register nsbypass for prestart or createRuntime",
                state.status
            ),
        )
    })?;
    let target = Target {
        container: &state.id,
        pid: Some(pid),
        netns_path: bundle.netns_path.as_deref(),
        rootfs: bundle.root.as_deref(),
        readonly: bundle.readonly,
        source: Source::Hook,
    };
    node.setup(
        &target,
        request,
        profiles_to_carry(node, bundle, request, pid)?,
    )
}

/// What of the requested profiles the hook must carry in itself: the
/// pieces the spec does not verifiably carry already (the docker runtime
/// entry and CDI put them there), planned once. Whatever carries them,
/// the container's process must have the capabilities and limits the
/// profiles need: the spec is checked here, since no hook can change it.
fn profiles_to_carry(
    node: &Node,
    bundle: &Bundle,
    request: &Request,
    pid: i32,
) -> Result<Option<profile::Plan>, Failure> {
    if request.profiles.is_empty() {
        return Ok(None);
    }
    let plan = profile::plan(&request.profiles, &node.config)?;
    plan.check_process(bundle, |name| nsutil::rlimit::of(pid, name).ok())?;
    Ok(plan.not_in_spec(bundle))
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

fn links(list: &[Released]) -> String {
    list.iter()
        .map(|r| format!("{} {} {}", r.network, r.ifname, addresses(&r.addresses)))
        .collect::<Vec<_>>()
        .join("; ")
}
