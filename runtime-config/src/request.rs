//! What a container asks nsbypass for, read from its annotations and, where
//! the admin allows it (`[requests] from_env`), from its process
//! environment. The environment is the image author's as much as the
//! operator's (an image's `ENV` looks the same as `-e`), so by default it
//! does not count; the docker runtime entry turns `-e NSBYPASS_*` into
//! annotations in the spec it edits.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::bundle::Bundle;
use crate::names::{check_namespace_name, check_network_name, check_pod_name};

/// Annotation and environment variable naming the networks to join.
pub const NETWORK_ANNOTATION: &str = "nsbypass.io/network";
pub const NETWORK_ENV: &str = "NSBYPASS_NETWORK";
/// Annotation and environment variable pinning addresses:
/// `NAME=ADDR[,NAME=ADDR]`, at most one address per family per network
/// (`fast=10.10.0.150,fast=fd00:77::150`).
pub const IP_ANNOTATION: &str = "nsbypass.io/ip";
pub const IP_ENV: &str = "NSBYPASS_IP";
/// Annotation and environment variable naming bypass-stack profiles.
pub const PROFILE_ANNOTATION: &str = "nsbypass.io/profile";
pub const PROFILE_ENV: &str = "NSBYPASS_PROFILE";
/// The Kubernetes namespace of the container's pod, as CRI-O and containerd
/// set it: what `allow_namespaces` is checked against.
pub const POD_NAMESPACE_ANNOTATION: &str = "io.kubernetes.pod.namespace";
/// The pod's name, as CRI-O and containerd set it (in every container's
/// spec of the pod): with the namespace, the pod's identity.
pub const POD_NAME_ANNOTATION: &str = "io.kubernetes.pod.name";
/// The environment variables that can carry a request.
pub const REQUEST_ENV: [&str; 3] = [NETWORK_ENV, IP_ENV, PROFILE_ENV];
/// Every annotation under this prefix must be one nsbypass knows.
pub const ANNOTATION_PREFIX: &str = "nsbypass.io/";

const KNOWN_ANNOTATIONS: [&str; 3] = [NETWORK_ANNOTATION, IP_ANNOTATION, PROFILE_ANNOTATION];

/// A request that cannot be honoured as written. `origin` says where it came
/// from (`annotation nsbypass.io/ip`, `env NSBYPASS_IP`).
/// `origin` can hold an annotation's own key, so it is shown escaped.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", origin.escape_debug())]
pub struct RequestError {
    pub origin: String,
    pub message: String,
}

/// One container's request. Empty means "nothing to do".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Network names, in request order (which fixes `netN` interface names).
    pub networks: Vec<String>,
    /// Pinned addresses by network name: at most one per family, IPv4 first.
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Bypass-stack profile names, in request order. Whether the spec
    /// already carries one is for the hook to verify against the spec
    /// ([`crate::install::check_in_spec`]): the in-spec marker variable is
    /// in the image's reach and is not read here.
    pub profiles: Vec<String>,
    /// The pod's Kubernetes namespace, from its annotation only (never
    /// from the environment).
    pub namespace: Option<String>,
    /// The pod's identity, `NAMESPACE/NAME`, when both pod annotations are
    /// there (never from the environment): what MACs and address slots are
    /// derived from instead of the container id, which CRI-O makes up
    /// anew for every container, so that a re-created pod (a StatefulSet's
    /// `web-0`) comes back with its MAC. No container id holds a `/`, so
    /// it is never a container's identity.
    pub pod: Option<String>,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.profiles.is_empty()
    }

    /// Whether the bundle's process environment names a request (which
    /// counts only with `from_env`).
    pub fn in_env(bundle: &Bundle) -> bool {
        REQUEST_ENV.iter().any(|k| bundle.env_var(k).is_some())
    }

    /// Reads the request from a bundle's annotations and, with `from_env`,
    /// its environment. An annotation wins over the environment variable
    /// for the same request.
    pub fn from_bundle(bundle: &Bundle, from_env: bool) -> Result<Request, RequestError> {
        if let Some(key) = bundle
            .annotations
            .keys()
            .find(|k| k.starts_with(ANNOTATION_PREFIX) && !KNOWN_ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(RequestError {
                origin: format!("annotation {key}"),
                message: format!(
                    "unknown nsbypass annotation (known: {})",
                    KNOWN_ANNOTATIONS.join(", ")
                ),
            });
        }
        let pick = |annotation: &str, env: &str| -> Option<(String, String)> {
            match bundle.annotations.get(annotation) {
                Some(v) => Some((format!("annotation {annotation}"), v.clone())),
                None if from_env => bundle
                    .env_var(env)
                    .map(|v| (format!("env {env}"), v.to_owned())),
                None => None,
            }
        };

        let mut request = Request::from_values(
            pick(NETWORK_ANNOTATION, NETWORK_ENV),
            pick(IP_ANNOTATION, IP_ENV),
            pick(PROFILE_ANNOTATION, PROFILE_ENV),
        )?;
        request.namespace = bundle.annotations.get(POD_NAMESPACE_ANNOTATION).cloned();
        // Only for a container that asks for something: for any other,
        // the annotations are none of nsbypass's business.
        if !request.is_empty() {
            request.pod = pod_identity(bundle)?;
        }
        Ok(request)
    }

    /// Reads a request from its three values, each with where it came from
    /// (for errors): `nsbypass attach`'s flags use this as the hook's
    /// annotations do, so both accept exactly the same forms.
    pub fn from_values(
        networks: Option<(String, String)>,
        addresses: Option<(String, String)>,
        profiles: Option<(String, String)>,
    ) -> Result<Request, RequestError> {
        let mut request = Request::default();
        if let Some((origin, value)) = networks {
            request.networks = parse_names(&value, "network")
                .map_err(|message| RequestError { origin, message })?;
        }
        if let Some((origin, value)) = profiles {
            request.profiles = parse_names(&value, "profile")
                .map_err(|message| RequestError { origin, message })?;
        }
        if let Some((origin, value)) = addresses {
            request.addresses = parse_addresses(&value, &request.networks)
                .map_err(|message| RequestError { origin, message })?;
        }
        Ok(request)
    }
}

/// `NAMESPACE/NAME` from the pod annotations when both are there. They
/// are hashed into MACs and written into records: a value that is not a
/// Kubernetes name (CRI-O and containerd never set one) is refused rather
/// than silently falling back to the container's identity.
fn pod_identity(bundle: &Bundle) -> Result<Option<String>, RequestError> {
    let (Some(namespace), Some(name)) = (
        bundle.annotations.get(POD_NAMESPACE_ANNOTATION),
        bundle.annotations.get(POD_NAME_ANNOTATION),
    ) else {
        return Ok(None);
    };
    let refuse = |annotation: &str, message: String| RequestError {
        origin: format!("annotation {annotation}"),
        message,
    };
    check_namespace_name(namespace).map_err(|m| refuse(POD_NAMESPACE_ANNOTATION, m))?;
    check_pod_name(name).map_err(|m| refuse(POD_NAME_ANNOTATION, m))?;
    Ok(Some(format!("{namespace}/{name}")))
}

/// A comma-separated list of network or profile names (`what`).
fn parse_names(value: &str, what: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        check_network_name(name)
            .map_err(|m| format!("{} in {value:?}", m.replace("network", what)))?;
        if names.iter().any(|n| n == name) {
            return Err(format!("{what} {name} is named twice in {value:?}"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Parses `NAME=ADDR[,NAME=ADDR]` (the `nsbypass.io/ip` form, also what
/// a `--ip` flag takes) for a container requesting `networks`: each name
/// must be requested, and each network gets at most one address per
/// family, returned IPv4 first.
pub fn parse_addresses(
    value: &str,
    networks: &[String],
) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let mut addresses: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for item in value.split(',').map(str::trim) {
        let (name, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not of the form NETWORK=ADDRESS"))?;
        let name = name.trim();
        if !networks.iter().any(|n| n == name) {
            return Err(format!(
                "{item:?} names network {name:?}, which the container does not request"
            ));
        }
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not an IP address", addr.trim()))?;
        let pinned = addresses.entry(name.to_owned()).or_default();
        if pinned.iter().any(|a| a.is_ipv6() == addr.is_ipv6()) {
            let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
            return Err(format!(
                "network {name} has two {family} addresses in {value:?}"
            ));
        }
        pinned.push(addr);
        pinned.sort_by_key(IpAddr::is_ipv6);
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(annotations: &[(&str, &str)], env: &[&str]) -> Bundle {
        Bundle {
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Bundle::default()
        }
    }

    fn req(annotations: &[(&str, &str)], env: &[&str]) -> Result<Request, String> {
        Request::from_bundle(&bundle(annotations, env), true).map_err(|e| e.to_string())
    }

    #[test]
    fn the_environment_counts_only_when_asked_to_and_the_namespace_never_comes_from_it() {
        let b = bundle(
            &[("io.kubernetes.pod.namespace", "trading")],
            &["NSBYPASS_NETWORK=fast", "NSBYPASS_IP=fast=10.1.0.7"],
        );
        assert!(Request::in_env(&b));
        let off = Request::from_bundle(&b, false).unwrap();
        assert!(off.is_empty() && off.addresses.is_empty());
        assert_eq!(off.namespace.as_deref(), Some("trading"));
        let on = Request::from_bundle(&b, true).unwrap();
        assert_eq!(on.networks, ["fast"]);
        let env_ns = bundle(
            &[],
            &[
                "IO_KUBERNETES_POD_NAMESPACE=trading",
                "NSBYPASS_NETWORK=fast",
            ],
        );
        assert_eq!(Request::from_bundle(&env_ns, true).unwrap().namespace, None);
        assert!(!Request::in_env(&bundle(&[], &["PATH=/bin"])));
    }

    #[test]
    fn the_pod_is_the_identity_only_with_both_annotations_and_never_from_the_environment() {
        let pod = [
            ("io.kubernetes.pod.namespace", "trading"),
            ("io.kubernetes.pod.name", "web-0"),
            ("nsbypass.io/network", "fast"),
        ];
        let r = req(&pod, &[]).unwrap();
        assert_eq!(r.pod.as_deref(), Some("trading/web-0"));
        assert_eq!(r.namespace.as_deref(), Some("trading"));
        assert_eq!(req(&pod[1..], &[]).unwrap().pod, None, "no namespace");
        assert_eq!(req(&[pod[0], pod[2]], &[]).unwrap().pod, None, "no name");
        let env = [
            "IO_KUBERNETES_POD_NAMESPACE=trading",
            "IO_KUBERNETES_POD_NAME=web-0",
            "NSBYPASS_NETWORK=fast",
        ];
        assert_eq!(req(&[], &env).unwrap().pod, None);
        let e = req(&[pod[0], ("io.kubernetes.pod.name", "web/0"), pod[2]], &[]).unwrap_err();
        assert!(
            e.starts_with("annotation io.kubernetes.pod.name: ") && e.contains("pod name"),
            "{e}"
        );
        let e = req(
            &[("io.kubernetes.pod.namespace", "Trading"), pod[1], pod[2]],
            &[],
        )
        .unwrap_err();
        assert!(
            e.starts_with("annotation io.kubernetes.pod.namespace: "),
            "{e}"
        );
    }

    #[test]
    fn pod_annotations_are_not_checked_for_a_container_that_asks_for_nothing() {
        // Not nsbypass's input then: the container is none of its business
        // (an image's NSBYPASS_* with from_env off gets this far).
        let odd = [
            ("io.kubernetes.pod.namespace", "Not_A_Namespace"),
            ("io.kubernetes.pod.name", "web/0"),
        ];
        let b = bundle(&odd, &["NSBYPASS_NETWORK=fast"]);
        let r = Request::from_bundle(&b, false).unwrap();
        assert!(r.is_empty() && r.pod.is_none());
        // Asked, they are checked.
        assert!(Request::from_bundle(&b, true).is_err());
    }

    #[test]
    fn nothing_asked() {
        let r = req(&[("io.kubernetes.pod", "x")], &["PATH=/bin"]).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn networks_and_addresses_from_annotations() {
        let r = req(
            &[
                ("nsbypass.io/network", "fast, slow"),
                ("nsbypass.io/ip", "slow=10.1.0.7"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(r.networks, ["fast", "slow"]);
        assert_eq!(r.addresses["slow"], ["10.1.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn one_address_per_family_per_network_ipv4_first() {
        let r = req(
            &[
                ("nsbypass.io/network", "fast,slow"),
                (
                    "nsbypass.io/ip",
                    "fast=fd00:77::150, fast=10.77.0.150,slow=fd00:1::9",
                ),
            ],
            &[],
        )
        .unwrap();
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(r.addresses["fast"], ips(&["10.77.0.150", "fd00:77::150"]));
        assert_eq!(r.addresses["slow"], ips(&["fd00:1::9"]));
        // The CLI's --ip takes the same form.
        let pinned = parse_addresses("fast=fd00:77::7", &["fast".into()]).unwrap();
        assert_eq!(pinned["fast"], ips(&["fd00:77::7"]));
    }

    #[test]
    fn profiles_alone_or_with_networks() {
        let r = req(&[("nsbypass.io/profile", "onload")], &[]).unwrap();
        assert!(!r.is_empty() && r.networks.is_empty());
        assert_eq!(r.profiles, ["onload"]);
        let r = req(
            &[],
            &["NSBYPASS_PROFILE=onload,rdma", "NSBYPASS_NETWORK=fast"],
        )
        .unwrap();
        assert_eq!((r.profiles.len(), r.networks.len()), (2, 1));
        let e = req(&[("nsbypass.io/profile", "a,a")], &[]).unwrap_err();
        assert_eq!(
            e,
            "annotation nsbypass.io/profile: profile a is named twice in \"a,a\""
        );
    }

    #[test]
    fn the_in_spec_marker_does_not_take_a_profile_off_the_request() {
        let r = req(
            &[],
            &["NSBYPASS_PROFILE=onload", "NSBYPASS_PROFILE_IN_SPEC=onload"],
        )
        .unwrap();
        assert_eq!(r.profiles, ["onload"]);
        assert!(!r.is_empty(), "the hook verifies the spec itself");
    }

    #[test]
    fn environment_for_runtimes_without_annotations() {
        let r = req(&[], &["NSBYPASS_NETWORK=fast", "NSBYPASS_IP=fast=10.0.0.9"]).unwrap();
        assert_eq!(r.networks, ["fast"]);
        assert_eq!(r.addresses.len(), 1);
    }

    #[test]
    fn annotation_wins_over_environment_per_request() {
        let r = req(
            &[("nsbypass.io/network", "fast")],
            &["NSBYPASS_NETWORK=slow", "NSBYPASS_IP=fast=10.0.0.9"],
        )
        .unwrap();
        assert_eq!(r.networks, ["fast"]);
        assert_eq!(r.addresses["fast"], ["10.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_requests_say_where_and_why() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            (
                &[("nsbypass.io/network", "fast,")],
                &[],
                "annotation nsbypass.io/network: empty network name in \"fast,\"",
            ),
            (
                &[("nsbypass.io/network", "fast,fast")],
                &[],
                "network fast is named twice",
            ),
            (
                &[("nsbypass.io/network", "../x")],
                &[],
                "may not start with '.'",
            ),
            (
                &[("nsbypass.io/networks", "fast")],
                &[],
                "annotation nsbypass.io/networks: unknown nsbypass annotation",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "10.0.0.1"),
                ],
                &[],
                "\"10.0.0.1\" is not of the form NETWORK=ADDRESS",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "slow=10.0.0.1"),
                ],
                &[],
                "names network \"slow\", which the container does not request",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "fast=10.0.0"),
                ],
                &[],
                "\"10.0.0\" is not an IP address",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "fast=10.0.0.1,fast=10.0.0.2"),
                ],
                &[],
                "network fast has two IPv4 addresses in \"fast=10.0.0.1,fast=10.0.0.2\"",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "fast=fd00::1,fast=fd00::2"),
                ],
                &[],
                "network fast has two IPv6 addresses",
            ),
            (
                &[
                    ("nsbypass.io/network", "fast"),
                    ("nsbypass.io/ip", "fast=fd00::1::2"),
                ],
                &[],
                "\"fd00::1::2\" is not an IP address",
            ),
            (
                &[],
                &["NSBYPASS_IP=fast=10.0.0.1"],
                "env NSBYPASS_IP: \"fast=10.0.0.1\" names network \"fast\"",
            ),
        ];
        for (annotations, env, want) in cases {
            let got = req(annotations, env).unwrap_err();
            assert!(got.contains(want), "got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn an_unknown_annotation_with_a_newline_is_one_line() {
        // Caught by the one-line check of fuzz/fuzz_targets/request.rs.
        let got = req(&[("nsbypass.io/a\nb", "x")], &[]).unwrap_err();
        assert!(
            got.starts_with("annotation nsbypass.io/a\\nb: unknown nsbypass annotation"),
            "{got}"
        );
        assert!(!got.contains('\n'), "{got:?}");
    }
}
