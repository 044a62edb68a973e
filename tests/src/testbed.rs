//! [`Testbed`]: a throwaway "container host" and its wire, in network
//! namespaces of their own, so tests never touch the machine's interfaces and
//! many testbeds can live side by side.

use crate::cmd;
use crate::container::ContainerBuilder;
use crate::rootfs;
use crate::runc::Runc;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

/// The /24 a testbed's wire uses unless told otherwise. Each testbed has its
/// own namespaces, so all of them can use the same subnet at once.
pub const DEFAULT_PREFIX: &str = "10.77.0";

/// Throwaway network and runc environment for one test.
///
/// Two network namespaces stand in for machines: `<tag>-h` is the container
/// host, whose "NIC" `<tag>n` is the MACVLAN parent nsbypass is configured
/// with; `<tag>-p` is a peer machine on that NIC's wire, reached through the
/// other end of a veth pair, `<tag>w`, which has [`Testbed::peer_ip`]. runc
/// runs inside `<tag>-h` with its state under [`Testbed::dir`], so containers,
/// the hooks runc runs and everything they create stay inside the testbed.
///
/// Dropping it deletes its containers (runc, podman and a still running
/// [`crate::Dockerd`]'s, running their poststop hooks), stops that dockerd,
/// deletes both namespaces (and so the veth pair), unmounts whatever was left
/// mounted in its directory and removes the directory, also when a test
/// panics.
#[derive(Debug)]
pub struct Testbed {
    /// Short name unique among live testbeds of all processes; prefix of every
    /// name below. Short because interface names have at most 15 bytes.
    pub tag: String,
    /// Name of the netns that plays the container host (`<tag>-h`).
    pub host_ns: String,
    /// Name of the netns that plays a machine on the wire (`<tag>-p`).
    pub peer_ns: String,
    /// The parent "NIC" in the host netns (`<tag>n`): up, no address.
    pub parent: String,
    /// The peer machine's end of the wire (`<tag>w`) in the peer netns.
    pub peer_link: String,
    /// The wire's subnet in CIDR form, e.g. `10.77.0.0/24`.
    pub subnet: String,
    /// The peer machine's address on the wire (`.1` of the subnet).
    pub peer_ip: Ipv4Addr,
    /// Private directory: runc state, bundles, rootfs, config, nsbypass state.
    pub dir: PathBuf,
    /// The subnet's first three octets, for [`Testbed::addr`].
    prefix: [u8; 3],
    runc: Runc,
}

impl Testbed {
    /// A testbed on the [`DEFAULT_PREFIX`] subnet whose runc sees the
    /// machine's cgroups as they are (here: v1, with cgroup2 only at
    /// `/sys/fs/cgroup/unified`), so devices are policed by the v1 devices
    /// controller.
    pub fn new() -> Result<Testbed> {
        Testbed::with_subnet(DEFAULT_PREFIX)
    }

    /// Like [`Testbed::new`], but runc, and so the hooks it runs, see cgroup v2
    /// at `/sys/fs/cgroup`, as on a machine booted with the unified hierarchy
    /// only: containers land in `0::/<cgroupsPath>` and runc polices their
    /// devices with an eBPF program instead of `devices.allow`. Each runc
    /// invocation gets a throwaway mount namespace with cgroup2 mounted over
    /// `/sys/fs/cgroup`, so this works on a v1 (hybrid) machine and touches
    /// nothing outside the testbed. Also needs util-linux's `unshare` and
    /// `mount`.
    pub fn new_cgroup2() -> Result<Testbed> {
        Testbed::setup(DEFAULT_PREFIX, true)
    }

    /// A testbed whose wire is `<prefix24>.0/24`, e.g. `"10.77.0"`, for tests
    /// that need a subnet other than the default. Only 10.x.y is accepted:
    /// the namespaces are private, but a private-range address is the
    /// harmless choice should one ever leak.
    pub fn with_subnet(prefix24: &str) -> Result<Testbed> {
        Testbed::setup(prefix24, false)
    }

    /// The constructors' common part; `cgroup2` as in [`Testbed::new_cgroup2`].
    fn setup(prefix24: &str, cgroup2: bool) -> Result<Testbed> {
        crate::check_tools()?;
        if cgroup2 {
            crate::check_cgroup2_tools()?;
        }
        let base: Ipv4Addr = format!("{prefix24}.0").parse().with_context(|| {
            format!("subnet prefix {prefix24:?} is not three octets like \"10.77.0\"")
        })?;
        let [a, b, c, _] = base.octets();
        if a != 10 {
            bail!("subnet prefix {prefix24:?} is outside 10.0.0.0/8");
        }

        let (tag, dir) = claim_tag()?;
        let host_ns = format!("{tag}-h");
        let runc = Runc::new(
            Path::new("/run/netns").join(&host_ns),
            dir.join("runc"),
            dir.clone(),
            cgroup2,
        );
        // From here on, Drop removes whatever part of the setup was made.
        let tb = Testbed {
            host_ns,
            peer_ns: format!("{tag}-p"),
            parent: format!("{tag}n"),
            peer_link: format!("{tag}w"),
            subnet: format!("{a}.{b}.{c}.0/24"),
            peer_ip: Ipv4Addr::new(a, b, c, 1),
            prefix: [a, b, c],
            tag,
            dir,
            runc,
        };
        tb.build_wire()?;
        for sub in ["runc", "bundles"] {
            let d = tb.dir.join(sub);
            fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        rootfs::make(&tb.rootfs())?;
        Ok(tb)
    }

    /// Creates both namespaces and the veth wire between them.
    fn build_wire(&self) -> Result<()> {
        let (h, p) = (&self.host_ns, &self.peer_ns);
        let (parent, wire, peer_ip) = (&self.parent, &self.peer_link, self.peer_ip);
        let steps = [
            format!("netns add {h}"),
            format!("netns add {p}"),
            // Made inside the namespaces (`-n`, `netns`), never in the machine's.
            format!("-n {h} link add {parent} type veth peer name {wire} netns {p}"),
            format!("-n {h} link set lo up"),
            format!("-n {h} link set {parent} up"),
            format!("-n {p} link set lo up"),
            format!("-n {p} addr add {peer_ip}/24 dev {wire}"),
            format!("-n {p} link set {wire} up"),
        ];
        for step in &steps {
            let mut ip = cmd::command("ip");
            ip.args(step.split_whitespace());
            cmd::check(cmd::output(ip, &self.dir)?, &format!("ip {step}"))?;
        }
        Ok(())
    }

    /// Whether runc in this testbed sees cgroup v2 ([`Testbed::new_cgroup2`]),
    /// for tests that expect v1 or v2 behaviour, e.g. where a device grant
    /// shows up.
    pub fn cgroup2(&self) -> bool {
        self.runc.cgroup2()
    }

    /// Address `.<host>` of the testbed's subnet, e.g. to expect a lease.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, host)
    }

    /// Runs a host tool inside the host netns (`nsenter --net`), e.g. to list
    /// links on the parent. Returns the output whatever the exit status.
    pub fn in_host(&self, argv: &[&str]) -> Result<Output> {
        self.in_netns(&self.host_ns, argv)
    }

    /// Like [`Testbed::in_host`], but fails unless the command succeeds;
    /// returns its stdout.
    pub fn in_host_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.in_host(argv)?,
            &format!("{} in {}", argv.join(" "), self.host_ns),
        )
    }

    /// Runs a host tool inside the peer netns, e.g. to ping a container from
    /// another machine on the wire (the machine has no iputils `ping`; use
    /// `busybox ping`). Returns the output whatever the exit status.
    pub fn in_peer(&self, argv: &[&str]) -> Result<Output> {
        self.in_netns(&self.peer_ns, argv)
    }

    /// Like [`Testbed::in_peer`], but fails unless the command succeeds;
    /// returns its stdout.
    pub fn in_peer_ok(&self, argv: &[&str]) -> Result<String> {
        cmd::check(
            self.in_peer(argv)?,
            &format!("{} in {}", argv.join(" "), self.peer_ns),
        )
    }

    /// A UDP socket bound to `0.0.0.0:<port>` in the peer netns, for a test
    /// to receive what a container sends to [`Testbed::peer_ip`] (or what a
    /// peer-side tool sends to 127.0.0.1) without running a server process.
    /// Made on a short-lived thread that alone enters the peer netns, so the
    /// caller's threads stay where they are; the socket stays in the peer
    /// netns for its whole life. Set a read timeout before receiving.
    pub fn peer_udp(&self, port: u16) -> Result<UdpSocket> {
        let path = Path::new("/run/netns").join(&self.peer_ns);
        let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let bind = move || -> Result<UdpSocket> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", path.display()))?;
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding UDP 0.0.0.0:{port} in {}", path.display()))
        };
        std::thread::spawn(bind)
            .join()
            .map_err(|_| anyhow!("the thread binding UDP port {port} in the peer netns panicked"))?
    }

    fn in_netns(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        let mut c = cmd::command("nsenter");
        c.arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .args(argv);
        cmd::output(c, &self.dir)
    }

    /// Writes `toml` to `<dir>/config.toml` and returns its path, to hand to
    /// the hook with `--config`.
    pub fn write_config(&self, toml: &str) -> Result<PathBuf> {
        let path = self.dir.join("config.toml");
        fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `<dir>/state`, for the config's `state_dir`, so that testbeds never
    /// share nsbypass state (leases, locks). Not created here: nsbypass makes
    /// it on first use, and a test can tell whether it was ever used.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The busybox rootfs containers use unless told otherwise. It is mounted
    /// read-only, so one copy serves all of the testbed's containers.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Makes a fresh, private busybox rootfs `<dir>/rootfs-<name>`, for a
    /// container that needs a writable one or whose rootfs a test tampers with
    /// (pass it to [`ContainerBuilder::rootfs`]).
    pub fn new_rootfs(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(format!("rootfs-{name}"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        rootfs::make(&dir)?;
        Ok(dir)
    }

    /// Like [`Testbed::new_rootfs`], plus the dynamically linked `programs`
    /// (e.g. made by [`Testbed::build_c`]) and what they need to run: each is
    /// copied to `/usr/local/bin/<file name>` (on runc's default `PATH`), and
    /// every shared library `ldd` says it loads, the dynamic loader included,
    /// to the same absolute path inside (e.g. `/lib64/ld-linux-x86-64.so.2`,
    /// `/lib/x86_64-linux-gnu/libc.so.6`), as real files, not symlinks into
    /// the machine. `/etc` is empty and `/tmp` is mode 1777. Libraries a
    /// program only `dlopen`s are not found this way; pass them as programs
    /// too (they then land in `/usr/local/bin`) or copy them yourself.
    pub fn new_rootfs_with(&self, name: &str, programs: &[&Path]) -> Result<PathBuf> {
        let dir = self.new_rootfs(name)?;
        for program in programs {
            rootfs::add_program(&dir, program, &self.dir).with_context(|| {
                format!(
                    "adding {} to the rootfs {}",
                    program.display(),
                    dir.display()
                )
            })?;
        }
        Ok(dir)
    }

    /// Compiles the C program `source` with the machine's `gcc` (`-O2
    /// -Wall`), for tests that need a real dynamically linked program or a
    /// library to preload: writes `<dir>/c/<name>.c` and returns the path of
    /// the executable `<dir>/c/<name>` or, if `shared_library`, of
    /// `<dir>/c/lib<name>.so` (`-shared -fPIC`, linked with `-ldl` for
    /// `dlsym(RTLD_NEXT, ...)`). A compile error carries gcc's stderr.
    pub fn build_c(&self, name: &str, source: &str, shared_library: bool) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') {
            bail!("C program name {name:?} must be a plain file name");
        }
        if cmd::which("gcc").is_none() {
            bail!("no gcc to build {name}.c with (apt-get install -y gcc)");
        }
        let dir = self.dir.join("c");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let src = dir.join(format!("{name}.c"));
        fs::write(&src, source).with_context(|| format!("writing {}", src.display()))?;
        let out = if shared_library {
            dir.join(format!("lib{name}.so"))
        } else {
            dir.join(name)
        };
        let mut gcc = cmd::command("gcc");
        gcc.args(["-O2", "-Wall"]);
        if shared_library {
            gcc.args(["-shared", "-fPIC"]);
        }
        gcc.arg("-o").arg(&out).arg(&src);
        if shared_library {
            // After the source: the linker takes libraries in order.
            gcc.arg("-ldl");
        }
        cmd::check(
            cmd::output(gcc, &self.dir)?,
            &format!("gcc {}", src.display()),
        )?;
        Ok(out)
    }

    /// Starts describing a container with id `id` (unique within this testbed).
    pub fn container(&self, id: &str) -> ContainerBuilder<'_> {
        ContainerBuilder::new(self, id)
    }

    /// The ids of the containers runc knows in this testbed, e.g. to check a
    /// failed create left none behind.
    pub fn runc_list(&self) -> Result<Vec<String>> {
        self.runc.list()
    }

    pub(crate) fn runc(&self) -> &Runc {
        &self.runc
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Containers first: their hooks run in the host netns and may need it.
        // (runc's root is missing when setup failed before making it.)
        if self.dir.join("runc").exists() {
            match self.runc.list() {
                Ok(ids) => ids.iter().for_each(|id| self.runc.force_delete(id)),
                Err(e) => eprintln!("testbed {}: listing containers: {e:#}", self.tag),
            }
        }
        crate::podman::cleanup(self);
        crate::docker::cleanup(self);
        for ns in [&self.host_ns, &self.peer_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                let mut del = cmd::command("ip");
                del.args(["netns", "del", ns]);
                if let Err(e) =
                    cmd::output(del, &self.dir).and_then(|o| cmd::check(o, "ip netns del"))
                {
                    eprintln!("testbed {}: deleting netns {ns}: {e:#}", self.tag);
                }
            }
        }
        // Anything podman, dockerd or a hook left mounted in the directory;
        // remove_dir_all would descend into a mount.
        if let Err(e) = crate::procs::unmount_under(&self.dir) {
            eprintln!(
                "testbed {}: {e:#}; keeping {}",
                self.tag,
                self.dir.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("testbed {}: removing {}: {e}", self.tag, self.dir.display());
        }
    }
}

/// Picks a tag no live testbed uses and creates its directory, which claims
/// it: `nb` + the pid in base 36 (5 digits cover Linux's largest pid) + a
/// per-process counter (2 digits). Tags of a dead process whose pid came back
/// are skipped, because their leftovers are still in the way.
fn claim_tag() -> Result<(String, PathBuf)> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let pid = base36(std::process::id(), 5);
    for _ in 0..36 * 36 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) % (36 * 36);
        let tag = format!("nb{pid}{}", base36(n, 2));
        let netns_taken = ["h", "p"]
            .iter()
            .any(|s| Path::new(&format!("/run/netns/{tag}-{s}")).exists());
        if netns_taken {
            continue;
        }
        let dir = std::env::temp_dir().join(format!("nsbypass-testbed-{tag}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((tag, dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free testbed tag for pid {pid}: are 1296 testbeds of this process alive?")
}

/// `n` in base 36, zero-padded to `width` digits (keeping the low digits if
/// `n` is larger).
fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("base-36 digits are ASCII")
}
