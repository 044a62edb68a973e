//! `nsbypass-demo [--nsbypass PATH]`: shows nsbypass at work on a throwaway
//! testbed, for a human who wants to see it before reading tests.
//!
//! Two runc containers ask for the network `fast`; the demo shows the MACVLAN
//! link and address each got, pings between them and to a peer machine on
//! the parent's wire, shows the leases, deletes the containers and shows the
//! leases released and the hook's log. Everything it made is removed on exit,
//! also on failure; any failure exits non-zero with the reason.

use anyhow::{bail, Context, Result};
use nsbypass_testbed::{skip_unless_root, Container, Testbed};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: nsbypass-demo [--nsbypass PATH]

Runs two runc containers with the nsbypass hook on a throwaway testbed and
shows what they got. PATH defaults to the release, else the debug, nsbypass
of the cargo target directory this demo was built in
(target/x86_64-unknown-linux-gnu/release/nsbypass: see .cargo/config.toml).";

/// The network the containers ask for, as the config names it.
const NETWORK: &str = "fast";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsbypass-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let hook = match parse_args()? {
        Some(hook) => hook,
        None => return Ok(()),
    };
    if skip_unless_root() {
        bail!("run it as root: it creates network namespaces and runc containers");
    }
    // Containers are declared after the testbed, so they are dropped (and
    // deleted) before it on every early return.
    let tb = Testbed::new().context("building the testbed")?;
    let config = tb.write_config(&config_toml(&tb))?;
    section("testbed");
    println!(
        "host netns   {} (parent NIC {}, no address)",
        tb.host_ns, tb.parent
    );
    println!(
        "peer netns   {} ({} {}/24)",
        tb.peer_ns, tb.peer_link, tb.peer_ip
    );
    println!("hook         {}", hook.display());
    println!("config       {}", config.display());

    section("containers");
    let a = start(&tb, "demo-a", &hook, &config)?;
    let b = start(&tb, "demo-b", &hook, &config)?;
    let mut addrs = Vec::new();
    for c in [&a, &b] {
        let link = nsbypass_link(c)?;
        let brief = c.netns_exec_ok(&["ip", "-br", "addr", "show", &link])?;
        let mac = c.exec_ok(&["cat", &format!("/sys/class/net/{link}/address")])?;
        println!("{}  pid {}  mac {} (seen inside)", c.id, c.pid, mac.trim());
        println!("        {}", brief.trim());
        addrs.push(ipv4_in(&brief).with_context(|| format!("no IPv4 address on {}", c.id))?);
    }

    section("pings");
    ping(&a, addrs[1], "demo-b")?;
    ping(&a, tb.peer_ip, "the peer host")?;
    ping(&b, tb.peer_ip, "the peer host")?;

    let leases = tb.state_dir().join("leases");
    section("leases");
    let held = show_files(&leases)?;
    if held == 0 {
        bail!("no lease files under {}", leases.display());
    }

    section("delete");
    for c in [a, b] {
        let id = c.id.clone();
        let out = c.kill_and_delete()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // runc exits 0 even when a poststop hook fails; it logs an error.
        if !out.status.success() || stderr.contains("level=error") {
            bail!("runc delete {id} (poststop hook) failed: {}", stderr.trim());
        }
        println!("{id} deleted");
    }

    section("leases after delete");
    let left = show_files(&leases)?;
    if left != 0 {
        bail!(
            "{left} lease(s) left under {} after delete",
            leases.display()
        );
    }

    section("hook log");
    let log = tb.dir.join("nsbypass.log");
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    print!("{text}");

    section("cleanup");
    let (tag, dir) = (tb.tag.clone(), tb.dir.clone());
    drop(tb);
    println!("removed netns {tag}-h and {tag}-p, and {}", dir.display());
    Ok(())
}

/// The hook binary from `--nsbypass`, or the workspace's build; `None` after
/// printing the usage for `--help`.
fn parse_args() -> Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    let mut hook = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nsbypass" => {
                hook = Some(PathBuf::from(
                    args.next().context("--nsbypass needs a PATH")?,
                ));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let hook = match hook {
        Some(path) => path,
        None => built_hook()?,
    };
    if !hook.is_file() {
        bail!("no nsbypass binary at {}", hook.display());
    }
    // runc needs an absolute path, whatever directory it runs hooks from.
    let hook = std::path::absolute(&hook)
        .with_context(|| format!("making {} absolute", hook.display()))?;
    Ok(Some(hook))
}

/// `{release,debug}/nsbypass` beside this binary's profile directory, which
/// cargo puts in `target/<triple>/<profile>/` (`.cargo/config.toml` names
/// the triple).
fn built_hook() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the demo's own path")?;
    let target = me
        .parent()
        .and_then(Path::parent)
        .context("the demo binary is not inside a cargo target directory")?;
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("nsbypass"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no nsbypass binary in {0}/release or {0}/debug: \
                 build it with `cargo build -p nsbypass` or pass --nsbypass PATH",
                target.display()
            )
        })
}

/// The demo's nsbypass config: one network on the testbed's parent, with
/// state and log inside the testbed.
fn config_toml(tb: &Testbed) -> String {
    format!(
        r#"state_dir = "{dir}/state"

[log]
file = "{dir}/nsbypass.log"
level = "info"

[networks.{NETWORK}]
parent = "{parent}"
subnet = "{subnet}"
range = "{first}-{last}"
"#,
        dir = tb.dir.display(),
        parent = tb.parent,
        subnet = tb.subnet,
        first = tb.addr(100),
        last = tb.addr(199),
    )
}

/// Creates and starts a container that asks for [`NETWORK`], with nsbypass
/// as its prestart and poststop hook.
fn start(tb: &Testbed, id: &str, hook: &Path, config: &Path) -> Result<Container> {
    let c = tb
        .container(id)
        .annotation("nsbypass.io/network", NETWORK)
        .hooks(hook, config, &["prestart", "poststop"])
        .create()?;
    c.start().with_context(|| format!("starting {id}"))?;
    Ok(c)
}

/// The name of the link nsbypass added: the container's only one besides
/// `lo` (the name depends on the config).
fn nsbypass_link(c: &Container) -> Result<String> {
    let links = c.netns_exec_ok(&["ip", "-o", "link", "show"])?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .filter(|name| *name != "lo")
        .collect();
    match names.as_slice() {
        [name] => Ok((*name).to_owned()),
        _ => bail!(
            "{} has links {names:?}, expected exactly one besides lo",
            c.id
        ),
    }
}

/// The first IPv4 address in `ip -br addr` output (`10.77.0.100/24` form).
fn ipv4_in(brief: &str) -> Option<Ipv4Addr> {
    brief
        .split_whitespace()
        .find_map(|word| word.split('/').next()?.parse().ok())
}

/// Pings `to` once from inside `from`; fails with ping's output if no reply.
fn ping(from: &Container, to: Ipv4Addr, what: &str) -> Result<()> {
    let out = from.exec(&["ping", "-c", "1", "-W", "2", &to.to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} could not ping {what} ({to}): {}{}",
            from.id,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rtt = text
        .lines()
        .find_map(|l| l.strip_prefix("round-trip min/avg/max = "))
        .unwrap_or("?");
    println!(
        "{} -> {what} ({to}): reply, round trip min/avg/max {rtt}",
        from.id
    );
    Ok(())
}

/// Prints every file under `dir` (path relative to it, then its content)
/// and returns how many there are. Hidden files (a lease being written) and
/// directories do not count; a missing `dir` has none.
fn show_files(dir: &Path) -> Result<usize> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    for file in &files {
        let content =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.strip_prefix(dir).unwrap_or(file);
        println!("{}  {}", name.display(), content.trim());
    }
    if files.is_empty() {
        println!("(none in {})", dir.display());
    }
    Ok(files.len())
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            files.push(path);
        }
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title} ==");
}
