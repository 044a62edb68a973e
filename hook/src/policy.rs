//! Who may use what: the admin's policy, checked against a container's
//! request before anything is touched.
//!
//! The request is the container's (annotations a pod author writes, an
//! image's environment where `from_env` lets it count); the policy is the
//! admin's config. A network or profile with `allow_namespaces` serves
//! only pods of those Kubernetes namespaces (`io.kubernetes.pod.namespace`,
//! which CRI-O and containerd set from the pod's own namespace, over
//! anything the pod's annotations say); a network with `allow_static_ip =
//! false` hands out addresses but takes no `nsbypass.io/ip`. Requests of
//! the admin's own `nsbypass attach` are not checked: the admin can change
//! the config anyway.

use runtime_config::request::POD_NAMESPACE_ANNOTATION;
use runtime_config::{Config, Request};

use crate::failure::{Failure, Refusal, Step, Subject};

/// Refuses the first part of `request` that `config`'s policy does not
/// admit, naming the rule and its config key. Unknown networks and
/// profiles are left to the steps that resolve them.
pub fn check(request: &Request, config: &Config) -> Result<(), Failure> {
    let file = config.path.display();
    for name in &request.networks {
        let Some(network) = config.networks.get(name) else {
            continue;
        };
        let subject = || Subject::Network(name.clone());
        let key = format!("networks.{name}");
        admit(request, network.allow_namespaces.as_deref(), &key, config)
            .map_err(|m| refuse(subject(), m))?;
        if !network.allow_static_ip && request.addresses.contains_key(name) {
            return Err(refuse(
                subject(),
                format!(
                    "a static address (nsbypass.io/ip) is not allowed on this network ({key}.allow_static_ip = false in {file})"
                ),
            ));
        }
    }
    for name in &request.profiles {
        let Some(profile) = config.profiles.get(name) else {
            continue;
        };
        admit(
            request,
            profile.allow_namespaces.as_deref(),
            &format!("profiles.{name}"),
            config,
        )
        .map_err(|m| refuse(Subject::Profile(name.clone()), m))?;
    }
    Ok(())
}

/// Whether the request's namespace is on `allowed` (absent: everyone's).
fn admit(
    request: &Request,
    allowed: Option<&[String]>,
    key: &str,
    config: &Config,
) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let file = config.path.display();
    match &request.namespace {
        Some(ns) if allowed.contains(ns) => Ok(()),
        Some(ns) => Err(format!(
            "namespace {ns:?} may not use it ({key}.allow_namespaces = {allowed:?} in {file})"
        )),
        None => Err(format!(
            "the container has no Kubernetes namespace (annotation {POD_NAMESPACE_ANNOTATION}), and {key}.allow_namespaces = {allowed:?} in {file} admits only those"
        )),
    }
}

fn refuse(subject: Subject, message: String) -> Failure {
    Failure::new(Step::Policy, Refusal(message)).subject(subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[networks.open]
parent = "p"
subnet = "10.1.0.0/24"

[networks.trading]
parent = "p"
subnet = "10.2.0.0/24"
allow_namespaces = ["trading", "risk"]
allow_static_ip = false

[profiles.onload]
allow_namespaces = ["trading"]

[profiles.any]
"#;

    fn check_of(networks: &[&str], ip: &[&str], profiles: &[&str], ns: Option<&str>) -> String {
        let config = Config::parse(CONFIG, Path::new("/etc/nsbypass/config.toml")).unwrap();
        let request = Request {
            networks: networks.iter().map(|s| s.to_string()).collect(),
            addresses: ip
                .iter()
                .map(|n| (n.to_string(), vec!["10.2.0.5".parse().unwrap()]))
                .collect(),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            namespace: ns.map(str::to_owned),
            pod: None,
        };
        match check(&request, &config) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_rule_refuses_what_it_should_and_admits_what_it_should() {
        // (networks, networks pinned, profiles, namespace, outcome)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a str>,
            &'a str,
        );
        let cases: &[Case] = &[
            (&["open"], &["open"], &["any"], None, "ok"),
            (&["open"], &[], &[], Some("dev"), "ok"),
            (&["trading"], &[], &[], Some("trading"), "ok"),
            (&["trading"], &[], &[], Some("risk"), "ok"),
            (&["trading"], &[], &["onload"], Some("trading"), "ok"),
            (
                &["trading"],
                &[],
                &[],
                Some("dev"),
                "network trading: policy: namespace \"dev\" may not use it (networks.trading.allow_namespaces = [\"trading\", \"risk\"] in /etc/nsbypass/config.toml)",
            ),
            (
                &["open", "trading"],
                &[],
                &[],
                None,
                "network trading: policy: the container has no Kubernetes namespace (annotation io.kubernetes.pod.namespace), and networks.trading.allow_namespaces = [\"trading\", \"risk\"] in /etc/nsbypass/config.toml admits only those",
            ),
            (
                &["trading"],
                &["trading"],
                &[],
                Some("trading"),
                "network trading: policy: a static address (nsbypass.io/ip) is not allowed on this network (networks.trading.allow_static_ip = false in /etc/nsbypass/config.toml)",
            ),
            (
                &[],
                &[],
                &["onload"],
                Some("risk"),
                "profile onload: policy: namespace \"risk\" may not use it (profiles.onload.allow_namespaces = [\"trading\"] in /etc/nsbypass/config.toml)",
            ),
            (&["nosuch"], &[], &["nosuch"], None, "ok"),
        ];
        for (networks, ip, profiles, ns, want) in cases {
            assert_eq!(
                check_of(networks, ip, profiles, *ns),
                *want,
                "{networks:?} {ip:?} {profiles:?} {ns:?}"
            );
        }
    }
}
