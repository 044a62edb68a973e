//! Issue 12, the address guard: a container that holds CAP_NET_RAW (as
//! docker's do) writes raw frames that claim another MAC or address, and
//! sniffers on the peer host and in a sibling container on the same parent
//! show which arrive. With the guard none do, while the container's own
//! traffic (ping, TCP, IPv6 neighbour discovery) flows; without it they
//! do (so these tests can fail); with the filter inside the namespace
//! deleted, as a container with CAP_NET_ADMIN could, the parent's filter
//! still stops them towards the peer.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::direct::{assert_no_guard_tables, guard_tables_in, PinnedNetns};
use common::{delete, hooked, iface, pings, testbed};
use nsbypass_testbed::{Container, Testbed};
use serde_json::Value;

/// Sends each frame given in hex on an interface through a packet socket,
/// as any process with CAP_NET_RAW may; `-b` first sets
/// `PACKET_QDISC_BYPASS`, which skips the qdisc layer and tc.
const SPOOF_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    int i = 1, bypass = 0;
    if (argc > 1 && strcmp(argv[1], "-b") == 0) { bypass = 1; i++; }
    if (argc - i < 2) { fprintf(stderr, "usage: spoof [-b] IFNAME HEX...\n"); return 2; }
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    if (bypass && setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof bypass) < 0) {
        perror("PACKET_QDISC_BYPASS"); return 1;
    }
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[i]) };
    if (!to.sll_ifindex) { perror(argv[i]); return 1; }
    for (i++; i < argc; i++) {
        unsigned char frame[1600];
        size_t n = strlen(argv[i]) / 2;
        if (n > sizeof frame) return 2;
        for (size_t k = 0; k < n; k++) sscanf(argv[i] + 2 * k, "%2hhx", &frame[k]);
        /* A frame a filter drops fails with ENOBUFS: the next one goes. */
        if (sendto(s, frame, n, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)n && errno != ENOBUFS) {
            perror("sendto"); return 1;
        }
    }
    return 0;
}
"#;

/// Prints, in hex, every frame an interface receives for MS milliseconds,
/// after a line `ready`.
const SNIFF_C: &str = r#"
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: sniff IFNAME MS\n"); return 2; }
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) { perror("socket"); return 1; }
    struct sockaddr_ll at = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = if_nametoindex(argv[1]) };
    if (!at.sll_ifindex || bind(s, (struct sockaddr *)&at, sizeof at) < 0) { perror(argv[1]); return 1; }
    struct timeval tick = { 0, 50000 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
    printf("ready\n"); fflush(stdout);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long ms = atol(argv[2]);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > ms) break;
        unsigned char frame[2048];
        struct sockaddr_ll from; socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, frame, sizeof frame, 0, (struct sockaddr *)&from, &len);
        if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
        for (ssize_t k = 0; k < n; k++) printf("%02x", frame[k]);
        printf("\n");
    }
    return 0;
}
"#;

/// Sends each frame given in hex another way a process with CAP_NET_RAW
/// may: `ring`/`ringb` a TPACKET_V3 TX ring (`ringb` with
/// `PACKET_QDISC_BYPASS`), `mmsg` one sendmmsg, `vnet`/`vnetg` a packet
/// socket with `PACKET_VNET_HDR` (`vnetg` marking each frame UDP GSO), and
/// `xdp` an AF_XDP socket's TX ring in copy mode (no XDP program needed).
const ATTACK_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <linux/virtio_net.h>
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif

static size_t unhex(const char *h, unsigned char *out, size_t cap) {
    size_t n = strlen(h) / 2;
    if (n > cap) exit(2);
    for (size_t k = 0; k < n; k++) sscanf(h + 2 * k, "%2hhx", &out[k]);
    return n;
}

static int ring(int ifindex, int bypass, int nframes, char **hex) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    int v = TPACKET_V3;
    if (setsockopt(s, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0) { perror("PACKET_VERSION"); return 1; }
    if (bypass && setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof bypass) < 0) { perror("bypass"); return 1; }
    struct tpacket_req3 req = { .tp_block_size = 1 << 16, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 32 };
    if (setsockopt(s, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0) { perror("PACKET_TX_RING"); return 1; }
    unsigned char *map = mmap(NULL, req.tp_block_size, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    struct sockaddr_ll at = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };
    if (bind(s, (struct sockaddr *)&at, sizeof at) < 0) { perror("bind"); return 1; }
    /* One frame per send: a frame a filter drops ends that send. */
    for (int i = 0; i < nframes; i++) {
        struct tpacket3_hdr *h = (void *)(map + (i % 32) * 2048);
        for (int w = 0; w < 1000 && h->tp_status != TP_STATUS_AVAILABLE; w++) usleep(100);
        unsigned char *data = (unsigned char *)h + TPACKET_ALIGN(sizeof(struct tpacket3_hdr));
        h->tp_len = unhex(hex[i], data, 1500);
        h->tp_next_offset = 0;
        h->tp_status = TP_STATUS_SEND_REQUEST;
        if (send(s, NULL, 0, 0) < 0 && errno != ENOBUFS) { perror("send"); return 1; }
        h->tp_status = TP_STATUS_AVAILABLE;
    }
    return 0;
}

static int mmsg(int ifindex, int nframes, char **hex) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };
    static unsigned char bufs[64][1600];
    struct mmsghdr m[64]; struct iovec iov[64];
    memset(m, 0, sizeof m);
    for (int i = 0; i < nframes && i < 64; i++) {
        iov[i].iov_base = bufs[i]; iov[i].iov_len = unhex(hex[i], bufs[i], 1600);
        m[i].msg_hdr.msg_name = &to; m[i].msg_hdr.msg_namelen = sizeof to;
        m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1;
    }
    int left = nframes, off = 0;
    while (left > 0) {
        int r = sendmmsg(s, m + off, left, 0);
        if (r < 0) { if (errno == ENOBUFS) { off++; left--; continue; } perror("sendmmsg"); return 1; }
        if (r == 0) break;
        off += r; left -= r;
    }
    return 0;
}

/* PACKET_VNET_HDR: a virtio_net_hdr before each frame; with -g, marks it
   GSO UDP_L4 with a gso_size of 64 (segments made after the qdisc). */
static int vnet(int ifindex, int gso, int nframes, char **hex) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    int one = 1;
    if (setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) { perror("PACKET_VNET_HDR"); return 1; }
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };
    for (int i = 0; i < nframes; i++) {
        unsigned char buf[1700];
        struct virtio_net_hdr *vh = (void *)buf;
        memset(vh, 0, sizeof *vh);
        size_t n = unhex(hex[i], buf + sizeof *vh, 1600);
        if (gso) {
            vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            vh->gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
            vh->gso_size = 64; vh->hdr_len = 14 + 20 + 8;
            vh->csum_start = 14 + 20; vh->csum_offset = 6;
        }
        if (sendto(s, buf, n + sizeof *vh, 0, (struct sockaddr *)&to, sizeof to) < 0 && errno != ENOBUFS)
            perror("sendto");
    }
    return 0;
}

#define NDESC 64
#define FSIZE 4096
static int xdp(int ifindex, int nframes, char **hex) {
    int fd = socket(AF_XDP, SOCK_RAW, 0);
    if (fd < 0) { perror("socket(AF_XDP)"); return 1; }
    unsigned char *umem = mmap(NULL, NDESC * FSIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (umem == MAP_FAILED) { perror("mmap umem"); return 1; }
    struct xdp_umem_reg mr = { .addr = (uint64_t)(uintptr_t)umem, .len = NDESC * FSIZE, .chunk_size = FSIZE };
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &mr, sizeof mr) < 0) { perror("XDP_UMEM_REG"); return 1; }
    int n = NDESC;
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_FILL_RING, &n, sizeof n) < 0) { perror("FILL_RING"); return 1; }
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &n, sizeof n) < 0) { perror("COMPLETION_RING"); return 1; }
    if (setsockopt(fd, SOL_XDP, XDP_TX_RING, &n, sizeof n) < 0) { perror("TX_RING"); return 1; }
    struct xdp_mmap_offsets off; socklen_t ol = sizeof off;
    if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0) { perror("MMAP_OFFSETS"); return 1; }
    unsigned char *tx = mmap(NULL, off.tx.desc + NDESC * sizeof(struct xdp_desc), PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_POPULATE, fd, XDP_PGOFF_TX_RING);
    if (tx == MAP_FAILED) { perror("mmap tx"); return 1; }
    struct sockaddr_xdp sx = { .sxdp_family = AF_XDP, .sxdp_ifindex = ifindex, .sxdp_queue_id = 0, .sxdp_flags = XDP_COPY };
    if (bind(fd, (struct sockaddr *)&sx, sizeof sx) < 0) { perror("bind(AF_XDP)"); return 1; }
    volatile uint32_t *prod = (void *)(tx + off.tx.producer);
    struct xdp_desc *desc = (void *)(tx + off.tx.desc);
    for (int i = 0; i < nframes && i < NDESC; i++) {
        desc[i].addr = (uint64_t)i * FSIZE;
        desc[i].len = unhex(hex[i], umem + i * FSIZE, 1600);
        desc[i].options = 0;
    }
    __atomic_store_n(prod, (uint32_t)(nframes < NDESC ? nframes : NDESC), __ATOMIC_RELEASE);
    for (int k = 0; k < 20; k++) {
        if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN && errno != ENOBUFS && errno != EBUSY) {
            perror("sendto(AF_XDP)"); return 1;
        }
        usleep(5000);
    }
    printf("xdp-sent\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: attack ring|ringb|mmsg|vnet|vnetg|xdp IFNAME HEX...\n"); return 2; }
    int ifindex = if_nametoindex(argv[2]);
    if (!ifindex) { perror(argv[2]); return 1; }
    int nframes = argc - 3; char **hex = argv + 3;
    /* A ring per frame: a frame a filter drops stops its ring's send. */
    if (!strcmp(argv[1], "ring") || !strcmp(argv[1], "ringb")) {
        for (int i = 0; i < nframes; i++)
            if (ring(ifindex, argv[1][4] == 'b', 1, hex + i)) return 1;
        return 0;
    }
    if (!strcmp(argv[1], "mmsg")) return mmsg(ifindex, nframes, hex);
    if (!strcmp(argv[1], "vnet")) return vnet(ifindex, 0, nframes, hex);
    if (!strcmp(argv[1], "vnetg")) return vnet(ifindex, 1, nframes, hex);
    if (!strcmp(argv[1], "xdp")) return xdp(ifindex, nframes, hex);
    return 2;
}
"#;

const PEER6: &str = "fd00:77::1";

/// `nsbypass --config CONFIG ARGS...` in the testbed's host namespace,
/// with `NSBYPASS_FAILPOINT=failpoint` if given.
fn nsbypass(tb: &Testbed, config: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = common::direct::cli(tb, config, args);
    if let Some(spec) = failpoint {
        cmd.env("NSBYPASS_FAILPOINT", spec);
    }
    cmd.output().expect("running nsbypass")
}

/// `doctor`'s report, whatever its verdict (a veth parent is always
/// promiscuous, which doctor reports).
fn doctor(bed: &Bed) -> String {
    let out = nsbypass(&bed.tb, &bed.config, &["doctor"], None);
    String::from_utf8(out.stdout).unwrap()
}

/// Its stdout; panics unless it succeeds.
fn ok(tb: &Testbed, config: &Path, args: &[&str]) -> String {
    let out = nsbypass(tb, config, args, None);
    assert!(
        out.status.success(),
        "nsbypass {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A dual-stack network `fast` with the guard as `guard` says.
fn config(tb: &Testbed, guard: &str) -> PathBuf {
    common::config(
        tb,
        &format!("subnet6 = \"fd00:77::/64\"\nrange6 = \"fd00:77::100-fd00:77::1ff\"\n{guard}"),
    )
}

struct Bed {
    tb: Testbed,
    config: PathBuf,
    spoof: PathBuf,
    sniff: PathBuf,
    attack: PathBuf,
}

impl Bed {
    fn new(guard: &str) -> Option<Bed> {
        let tb = testbed()?;
        let config = config(&tb, guard);
        let spoof = tb.build_c("spoof", SPOOF_C, false).expect("building spoof");
        let sniff = tb.build_c("sniff", SNIFF_C, false).expect("building sniff");
        let attack = tb
            .build_c("attack", ATTACK_C, false)
            .expect("building attack");
        common::give_the_peer_ipv6(&tb, PEER6);
        Some(Bed {
            tb,
            config,
            spoof,
            sniff,
            attack,
        })
    }

    /// The attacker: the spoofer in its rootfs, CAP_NET_RAW and nothing
    /// of CAP_NET_ADMIN (the testbed's containers get runc's defaults
    /// plus CAP_NET_RAW).
    fn attacker(&self, id: &str) -> Container {
        let rootfs = self
            .tb
            .new_rootfs_with(id, &[&self.spoof, &self.attack])
            .expect("a rootfs with spoof");
        let c = hooked(&self.tb, &self.config, id)
            .annotation("nsbypass.io/network", "fast")
            .rootfs(rootfs)
            .create()
            .expect("creating the attacker");
        c.start().expect("starting the attacker");
        let caps = c.exec_ok(&["grep", "CapEff", "/proc/self/status"]).unwrap();
        let eff = u64::from_str_radix(caps.split_whitespace().last().unwrap(), 16).unwrap();
        assert!(eff & (1 << 13) != 0, "CAP_NET_RAW in the attacker: {caps}");
        assert!(
            eff & (1 << 12) == 0,
            "no CAP_NET_ADMIN in the attacker: {caps}"
        );
        c
    }

    fn sibling(&self, id: &str) -> Container {
        let c = hooked(&self.tb, &self.config, id)
            .annotation("nsbypass.io/network", "fast")
            .create()
            .expect("creating the sibling");
        c.start().expect("starting the sibling");
        c
    }

    /// Starts a sniffer on `ifname` in the namespace at `netns`, returned
    /// once it is bound.
    fn sniffer(&self, netns: &Path, ifname: &str) -> Sniffer {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(&self.sniff)
            .args([ifname, "1500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sniff");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first, "ready\n", "sniff on {ifname}");
        Sniffer { child, out }
    }

    fn peer_netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.tb.peer_ns))
    }
}

struct Sniffer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Sniffer {
    /// Every frame it saw, as hex lines.
    fn frames(mut self) -> String {
        let mut text = String::new();
        self.out.read_to_string(&mut text).unwrap();
        self.child.wait().unwrap();
        text
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    m
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src, &ethertype.to_be_bytes(), payload].concat()
}

/// UDP to port 9 carrying `marker`.
fn udp4(src: Ipv4Addr, dst: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let udp = [
        &[0x30, 0x39, 0, 9][..],
        &((8 + marker.len()) as u16).to_be_bytes(),
        &[0, 0],
        marker,
    ]
    .concat();
    let mut ip = [
        &[0x45, 0][..],
        &((20 + udp.len()) as u16).to_be_bytes(),
        &[0, 0, 0x40, 0, 64, 17, 0, 0],
        &src.octets(),
        &dst.octets(),
    ]
    .concat();
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [ip, udp].concat()
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, marker: &[u8]) -> Vec<u8> {
    let len = (8 + marker.len()) as u16;
    let udp = [&[0x30, 0x39, 0, 9][..], &len.to_be_bytes(), &[0, 0], marker].concat();
    [
        &[0x60, 0, 0, 0][..],
        &len.to_be_bytes(),
        &[17, 64],
        &src.octets(),
        &dst.octets(),
        &udp,
    ]
    .concat()
}

/// An ARP reply "`spa` is at `sha`", with `marker` in the padding.
fn arp_reply(sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    [
        &[0, 1, 8, 0, 6, 4, 0, 2][..],
        &sha,
        &spa.octets(),
        &tha,
        &tpa.octets(),
        marker,
    ]
    .concat()
}

const BROADCAST: [u8; 6] = [0xff; 6];
const FOREIGN_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

/// Who is where on the wire.
struct Parties {
    own_mac: [u8; 6],
    own_ip: Ipv4Addr,
    sibling_mac: [u8; 6],
    sibling_ip: Ipv4Addr,
    peer_mac: [u8; 6],
    peer_ip: Ipv4Addr,
}

/// A frame to send and the marker that tells it in a capture.
struct Probe {
    kind: &'static str,
    /// Sent to this destination MAC.
    to: &'static str,
    marker: String,
    frame: Vec<u8>,
}

/// Every spoof kind and one legitimate frame, each to the broadcast
/// address, the sibling's MAC and the peer's MAC; `bypass` tags the
/// markers of the qdisc-bypass round.
fn probes(p: &Parties, round: &str) -> Vec<Probe> {
    let mut out = Vec::new();
    let foreign_ip = Ipv4Addr::new(
        p.own_ip.octets()[0],
        p.own_ip.octets()[1],
        p.own_ip.octets()[2],
        250,
    );
    for (to, dst) in [
        ("broadcast", BROADCAST),
        ("sibling", p.sibling_mac),
        ("peer", p.peer_mac),
    ] {
        let mk = |kind: &str| format!("NSBG-{round}-{kind}-{to}");
        let mut add = |kind: &'static str, frame: Vec<u8>| {
            let marker = mk(kind);
            let mut frame = frame;
            frame.extend_from_slice(marker.as_bytes());
            out.push(Probe {
                kind,
                to,
                marker,
                frame,
            });
        };
        let ip4 = |src: Ipv4Addr| udp4(src, p.peer_ip, b"");
        // The marker goes after each payload (a receiver's capture keeps it;
        // the lengths in the headers do not cover it).
        add("own", ethernet(dst, p.own_mac, 0x0800, &ip4(p.own_ip)));
        add(
            "sibling-ip",
            ethernet(dst, p.own_mac, 0x0800, &ip4(p.sibling_ip)),
        );
        add(
            "foreign-ip",
            ethernet(dst, p.own_mac, 0x0800, &ip4(foreign_ip)),
        );
        add(
            "foreign-mac",
            ethernet(dst, FOREIGN_MAC, 0x0800, &ip4(p.own_ip)),
        );
        add(
            "sibling-mac",
            ethernet(dst, p.sibling_mac, 0x0800, &ip4(p.sibling_ip)),
        );
        add(
            "arp-sibling",
            ethernet(
                dst,
                p.own_mac,
                0x0806,
                &arp_reply(p.own_mac, p.sibling_ip, dst, p.peer_ip, b""),
            ),
        );
        add(
            "arp-gateway",
            ethernet(
                dst,
                p.own_mac,
                0x0806,
                &arp_reply(p.own_mac, p.peer_ip, dst, p.sibling_ip, b""),
            ),
        );
        add(
            "ipv6-foreign",
            ethernet(
                dst,
                p.own_mac,
                0x86DD,
                &udp6("fd00:77::99".parse().unwrap(), PEER6.parse().unwrap(), b""),
            ),
        );
        add(
            "ethertype",
            ethernet(dst, p.own_mac, 0x88B5, b"local experimental"),
        );
    }
    out
}

/// What each sniffer saw of `probes`.
struct Seen {
    peer: Vec<String>,
    sibling: Vec<String>,
}

impl Seen {
    fn at_peer(&self, marker: &str) -> bool {
        self.peer.iter().any(|m| m == marker)
    }
    fn at_sibling(&self, marker: &str) -> bool {
        self.sibling.iter().any(|m| m == marker)
    }
}

/// Sends every probe from `attacker` (twice: through the qdisc layer, and
/// past it) while the peer and `sibling` sniff.
fn spoof(bed: &Bed, attacker: &Container, sibling: &Container, p: &Parties) -> (Vec<Probe>, Seen) {
    let peer = bed.sniffer(&bed.peer_netns(), &bed.tb.peer_link);
    let sib = bed.sniffer(
        &PathBuf::from(format!("/proc/{}/ns/net", sibling.pid)),
        "net1",
    );
    let mut all = Vec::new();
    for (round, bypass) in [("qdisc", false), ("bypass", true)] {
        let probes = probes(p, round);
        let mut argv: Vec<String> = vec!["spoof".into()];
        if bypass {
            argv.push("-b".into());
        }
        argv.push("net1".into());
        argv.extend(probes.iter().map(|probe| hex(&probe.frame)));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        attacker.exec_ok(&argv).expect("spoof runs in the attacker");
        all.extend(probes);
    }
    let found = |capture: String| -> Vec<String> {
        all.iter()
            .filter(|probe| capture.contains(&hex(probe.marker.as_bytes())))
            .map(|probe| probe.marker.clone())
            .collect()
    };
    let seen = Seen {
        peer: found(peer.frames()),
        sibling: found(sib.frames()),
    };
    (all, seen)
}

fn parties(bed: &Bed, attacker: &Container, sibling: &Container) -> Parties {
    let a = iface(attacker, "net1");
    let s = iface(sibling, "net1");
    let link = bed
        .tb
        .in_peer_ok(&["ip", "-j", "link", "show", "dev", &bed.tb.peer_link])
        .unwrap();
    let link: Value = serde_json::from_str(&link).unwrap();
    let peer_mac = link[0]["address"].as_str().unwrap().to_owned();
    let ip = |i: &common::Iface| i.ipv4[0].split('/').next().unwrap().parse().unwrap();
    Parties {
        own_mac: mac(&a.mac),
        own_ip: ip(&a),
        sibling_mac: mac(&s.mac),
        sibling_ip: ip(&s),
        peer_mac: mac(peer_mac.trim()),
        peer_ip: bed.tb.peer_ip,
    }
}

/// Whether the probe's destination delivers it to the peer / the sibling.
fn reaches_peer(probe: &Probe) -> bool {
    probe.to != "sibling"
}
fn reaches_sibling(probe: &Probe) -> bool {
    probe.to != "peer"
}

/// The attacker's own traffic: ping and TCP to the peer, and IPv6 to the
/// peer, whose address it must first resolve with neighbour discovery.
fn own_traffic_flows(bed: &Bed, attacker: &Container) {
    assert!(
        pings(attacker, &bed.tb.peer_ip.to_string()),
        "ping to the peer"
    );
    assert!(
        pings(attacker, PEER6),
        "IPv6 ping (neighbour discovery first) to the peer"
    );
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", bed.peer_netns().display()))
        .args(["--", "busybox", "nc", "-l", "-p", "7777"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("a TCP listener on the peer");
    std::thread::sleep(Duration::from_millis(200));
    let sent = attacker.exec(&[
        "sh",
        "-c",
        &format!("echo over-tcp | nc {} 7777", bed.tb.peer_ip),
    ]);
    let mut got = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    let _ = server.wait();
    assert!(
        sent.is_ok() && got.contains("over-tcp"),
        "TCP to the peer: got {got:?}"
    );
}

#[test]
fn a_container_with_cap_net_raw_sends_only_from_its_own_mac_and_addresses() {
    let Some(bed) = Bed::new("") else { return };
    let attacker = bed.attacker("ga");
    let sibling = bed.sibling("gs");
    let p = parties(&bed, &attacker, &sibling);
    own_traffic_flows(&bed, &attacker);

    let (probes, seen) = spoof(&bed, &attacker, &sibling, &p);
    for probe in &probes {
        let (peer, sib) = (seen.at_peer(&probe.marker), seen.at_sibling(&probe.marker));
        if probe.kind == "own" {
            // The sniffers work, and so does a raw socket that tells the truth.
            assert_eq!(peer, reaches_peer(probe), "{} at the peer", probe.marker);
            assert_eq!(
                sib,
                reaches_sibling(probe),
                "{} at the sibling",
                probe.marker
            );
        } else {
            assert!(!peer, "{} reached the peer", probe.marker);
            assert!(!sib, "{} reached the sibling", probe.marker);
        }
    }
    // The list says so.
    let list = ok(&bed.tb, &bed.config, &["list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert!(
        rows.iter()
            .all(|r| r["guarded"] == true && r["guard"] == "on"),
        "{list}"
    );
    let doctor = doctor(&bed);
    assert!(doctor.contains("ok   network fast: guard: "), "{doctor}");
    assert!(
        doctor.contains("ok   link net1 of ga (fast): guarded"),
        "{doctor}"
    );
    delete(attacker);
    delete(sibling);
    common::direct::assert_state_empty(&bed.tb, "after both poststops");
}

#[test]
fn without_the_guard_the_same_frames_arrive() {
    let Some(bed) = Bed::new("guard = false") else {
        return;
    };
    let attacker = bed.attacker("ua");
    let sibling = bed.sibling("us");
    let p = parties(&bed, &attacker, &sibling);
    let (probes, seen) = spoof(&bed, &attacker, &sibling, &p);
    for probe in &probes {
        assert_eq!(
            seen.at_peer(&probe.marker),
            reaches_peer(probe),
            "{} at the peer",
            probe.marker
        );
        assert_eq!(
            seen.at_sibling(&probe.marker),
            reaches_sibling(probe),
            "{} at the sibling",
            probe.marker
        );
    }
    let host = PathBuf::from(format!("/run/netns/{}", bed.tb.host_ns));
    assert!(guard_tables_in(&host).is_empty());
    let list = ok(&bed.tb, &bed.config, &["list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert!(
        rows.iter()
            .all(|r| r["guarded"] == false && r["guard"] == "off"),
        "{list}"
    );
    delete(attacker);
    delete(sibling);
}

#[test]
fn with_the_filter_in_its_namespace_deleted_the_parent_still_stops_spoofs_towards_the_peer() {
    let Some(bed) = Bed::new("") else { return };
    let attacker = bed.attacker("na");
    let sibling = bed.sibling("ns");
    let p = parties(&bed, &attacker, &sibling);
    // What a container with CAP_NET_ADMIN in its namespace can do.
    attacker
        .netns_exec_ok(&["nft", "delete", "table", "netdev", "nsbypass-link-net1"])
        .expect("deleting the filter in the namespace");
    let list = ok(&bed.tb, &bed.config, &["list", "--json"]);
    assert!(
        list.contains("partial: the filter in the namespace is gone"),
        "{list}"
    );
    let doctor = doctor(&bed);
    assert!(
        doctor.contains(
            "FAIL link net1 of na (fast): guard partial: the filter in the namespace is gone"
        ),
        "{doctor}"
    );

    let (probes, seen) = spoof(&bed, &attacker, &sibling, &p);
    for probe in probes.iter().filter(|p| reaches_peer(p)) {
        let expect = match probe.kind {
            "own" => true,
            // A sibling's MAC with the sibling's address: on the parent
            // it is the sibling's own frame. What the parent's filter
            // cannot tell apart (README, "Address guard"); the filter in
            // the namespace, while it stands, stops it.
            "sibling-mac" => true,
            _ => false,
        };
        assert_eq!(
            seen.at_peer(&probe.marker),
            expect,
            "{} at the peer",
            probe.marker
        );
    }
    // Bridge mode hands the sibling its frames without the parent's
    // egress: there, only the filter that was deleted stood.
    assert!(
        seen.at_sibling("NSBG-qdisc-sibling-ip-sibling"),
        "{:?}",
        seen.sibling
    );
    delete(attacker);
    delete(sibling);
    assert_no_guard_tables(&bed.tb, "after both poststops");
}

#[test]
fn rollback_kill_and_gc_leave_no_filter() {
    let Some(bed) = Bed::new("") else { return };
    let tb = &bed.tb;
    let host = PathBuf::from(format!("/run/netns/{}", tb.host_ns));
    let pinned = PinnedNetns::new(tb, "g1");
    let attach = [
        "attach",
        "--netns",
        pinned.path.to_str().unwrap(),
        "--id",
        "g1",
        "--network",
        "fast",
    ];
    // A step failing after the filters, and each filter's own step.
    for point in ["guard-link", "guard-parent", "link-up", "add-route"] {
        let out = nsbypass(tb, &bed.config, &attach, Some(&format!("{point}=error")));
        assert!(!out.status.success(), "{point}: attach was to fail");
        assert!(
            guard_tables_in(&pinned.path).is_empty(),
            "{point}: the namespace's filter is left"
        );
        assert!(
            guard_tables_in(&host).is_empty(),
            "{point}: the parent's filter is left"
        );
        common::direct::assert_state_empty(tb, &format!("after {point}=error"));
    }
    // Killed once both filters are made: gc finds the record and removes
    // them with the link.
    let out = nsbypass(tb, &bed.config, &attach, Some("link-up=kill"));
    assert!(!out.status.success());
    assert_eq!(guard_tables_in(&pinned.path), ["nsbypass-link-net1"]);
    assert_eq!(
        guard_tables_in(&host),
        [format!("nsbypass-parent-{}", tb.parent)]
    );
    ok(tb, &bed.config, &["gc"]);
    assert!(guard_tables_in(&pinned.path).is_empty());
    assert!(guard_tables_in(&host).is_empty());
    common::direct::assert_state_empty(tb, "after gc");

    // Two links on the parent: the first to go takes only its own keys.
    let second = PinnedNetns::new(tb, "g2");
    ok(tb, &bed.config, &attach);
    ok(
        tb,
        &bed.config,
        &[
            "attach",
            "--netns",
            second.path.to_str().unwrap(),
            "--id",
            "g2",
            "--network",
            "fast",
        ],
    );
    ok(tb, &bed.config, &["detach", "--id", "g1"]);
    let list = ok(tb, &bed.config, &["list", "--json"]);
    assert!(list.contains("\"guard\": \"on\""), "{list}");
    ok(tb, &bed.config, &["detach", "--id", "g2"]);
    assert!(guard_tables_in(&second.path).is_empty());
    assert!(guard_tables_in(&pinned.path).is_empty());
    assert_no_guard_tables(tb, "after both detaches");
    assert!(common::leases(tb).is_empty(), "{:?}", common::leases(tb));
}

fn ipv6_of(netns: &Path, ifname: &str) -> Ipv6Addr {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "ip", "-6", "-j", "addr", "show", "dev", ifname, "scope", "global",
        ])
        .output()
        .expect("ip -6 addr");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn netns_of(c: &Container) -> PathBuf {
    PathBuf::from(format!("/proc/{}/ns/net", c.pid))
}

fn eui64(m: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// An IPv6 packet with hop limit 255 and `body` after the fixed header;
/// the ICMPv6 message at `icmp_at` of it, if any, gets its checksum.
fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, body: &[u8], icmp_at: Option<usize>) -> Vec<u8> {
    let mut body = body.to_vec();
    if let Some(at) = icmp_at {
        let msg = &body[at..];
        let pseudo = [
            &src.octets()[..],
            &dst.octets(),
            &(msg.len() as u32).to_be_bytes(),
            &[0, 0, 0, 58],
            msg,
        ]
        .concat();
        let sum = checksum(&pseudo);
        body[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    }
    [
        &[0x60, 0, 0, 0][..],
        &(body.len() as u16).to_be_bytes(),
        &[next, 255],
        &src.octets(),
        &dst.octets(),
        &body,
    ]
    .concat()
}

/// A neighbour advertisement "`target` is at `lla`", override set.
fn na(target: Ipv6Addr, lla: [u8; 6]) -> Vec<u8> {
    neighbour_message([136, 0, 0, 0, 0x20, 0, 0, 0], target, 2, lla)
}

/// A neighbour solicitation for `target` from link-layer address `lla`.
fn ns(target: Ipv6Addr, lla: [u8; 6]) -> Vec<u8> {
    neighbour_message([135, 0, 0, 0, 0, 0, 0, 0], target, 1, lla)
}

/// ICMPv6 `head` (type, code, checksum, flags), `target`, and one
/// link-layer address option of kind `option`.
fn neighbour_message(head: [u8; 8], target: Ipv6Addr, option: u8, lla: [u8; 6]) -> Vec<u8> {
    [&head[..], &target.octets(), &[option, 1], &lla].concat()
}

/// Frames that keep the guard's fields true but lie elsewhere: neighbour
/// discovery from the attacker's own address claiming a sibling's or the
/// peer's, or another MAC (behind extension headers too), ARP in other
/// shapes, VLAN tags around spoofed frames, a fragment and a multicast
/// from a foreign source; and two it may send: its own neighbour
/// advertisement and a router advertisement.
fn lies(p: &Parties, own6: Ipv6Addr, sib6: Ipv6Addr) -> Vec<Probe> {
    let peer6: Ipv6Addr = PEER6.parse().unwrap();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let own_ll = eui64(p.own_mac);
    let mut out = Vec::new();
    for (to, dst) in [
        ("broadcast", BROADCAST),
        ("sibling", p.sibling_mac),
        ("peer", p.peer_mac),
    ] {
        let mut add = |kind: &'static str, frame: Vec<u8>| {
            let marker = format!("NSBL-{kind}-{to}");
            let mut frame = frame;
            frame.extend_from_slice(marker.as_bytes());
            out.push(Probe {
                kind,
                to,
                marker,
                frame,
            });
        };
        let from_own =
            |ethertype: u16, payload: &[u8]| ethernet(dst, p.own_mac, ethertype, payload);
        let nd = |body: &[u8]| from_own(0x86DD, &ip6(own_ll, all_nodes, 58, body, Some(0)));
        add("na-own", nd(&na(own6, p.own_mac)));
        add(
            "ra",
            nd(&[&[134, 0, 0, 0, 64, 0, 0x07, 0x08][..], &[0u8; 8]].concat()),
        );
        add("na-sibling6", nd(&na(sib6, p.own_mac)));
        add("na-peer6", nd(&na(peer6, p.own_mac)));
        add("na-own-sibling-mac", nd(&na(own6, p.sibling_mac)));
        add(
            "ns-sibling-mac",
            from_own(
                0x86DD,
                &ip6(own6, peer6, 58, &ns(peer6, p.sibling_mac), Some(0)),
            ),
        );
        add(
            "na-two-options",
            nd(&[
                &na(sib6, p.own_mac)[..24],
                &[14, 1, 0, 0, 0, 0, 0, 0, 2, 1],
                &p.own_mac,
            ]
            .concat()),
        );
        let dest_opts = [&[58, 0, 1, 4, 0, 0, 0, 0][..], &na(sib6, p.own_mac)].concat();
        add(
            "na-dest-opts",
            from_own(0x86DD, &ip6(own_ll, all_nodes, 60, &dest_opts, Some(8))),
        );
        let hbh = [&[58, 0, 5, 2, 0, 0, 1, 0][..], &na(sib6, p.own_mac)].concat();
        add(
            "na-hop-by-hop",
            from_own(0x86DD, &ip6(own_ll, all_nodes, 0, &hbh, Some(8))),
        );
        let o = p.own_ip.octets();
        let s = p.sibling_ip.octets();
        // ARP with an 8-byte hardware address, laid out so that the own
        // MAC and address sit where Ethernet/IPv4 ARP has its sender.
        let hlen8 = [
            &[0, 1, 8, 0, 8, 4, 0, 2][..],
            &p.own_mac,
            &o,
            &s[..2],
            &[0u8; 8],
            &p.peer_ip.octets(),
        ]
        .concat();
        add("arp-hlen8", from_own(0x0806, &hlen8));
        let mut ptype = arp_reply(p.own_mac, p.own_ip, dst, p.peer_ip, b"");
        ptype[2..4].copy_from_slice(&[0x86, 0xdd]);
        add("arp-ptype-ipv6", from_own(0x0806, &ptype));
        let mut request = arp_reply(p.own_mac, p.sibling_ip, [0; 6], p.peer_ip, b"");
        request[7] = 1;
        add("arp-request-sibling", from_own(0x0806, &request));
        let spoof4 = udp4(p.sibling_ip, p.peer_ip, b"");
        let arp_lie = arp_reply(p.own_mac, p.sibling_ip, dst, p.peer_ip, b"");
        let tagged = |tpid: u16, vid: u16, inner: u16, payload: &[u8]| {
            let tag = [&vid.to_be_bytes()[..], &inner.to_be_bytes(), payload].concat();
            from_own(tpid, &tag)
        };
        add("vlan0-ipv4", tagged(0x8100, 0, 0x0800, &spoof4));
        add("vlan0-arp", tagged(0x8100, 0, 0x0806, &arp_lie));
        add("vlan5-ipv4", tagged(0x8100, 5, 0x0800, &spoof4));
        add("qinq0-ipv4", tagged(0x88A8, 0, 0x0800, &spoof4));
        let mut fragment = udp4(p.sibling_ip, p.peer_ip, b"12345678");
        fragment[6..8].copy_from_slice(&[0, 0x10]);
        fragment[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&fragment[..20]);
        fragment[10..12].copy_from_slice(&sum.to_be_bytes());
        add("fragment-sibling-ip", from_own(0x0800, &fragment));
        add(
            "multicast-sibling-ip",
            ethernet(
                [1, 0, 0x5e, 0, 0, 1],
                p.own_mac,
                0x0800,
                &udp4(p.sibling_ip, "224.0.0.1".parse().unwrap(), b""),
            ),
        );
        add(
            "dest-opts-sibling6",
            from_own(
                0x86DD,
                &ip6(
                    sib6,
                    peer6,
                    60,
                    &[
                        &[17, 0, 1, 4, 0, 0, 0, 0][..],
                        &udp6(sib6, peer6, b"")[40..],
                    ]
                    .concat(),
                    None,
                ),
            ),
        );
    }
    out
}

/// Runs `send` while the peer and `sibling` sniff; what each saw.
fn sniffing(bed: &Bed, sibling: &Container, probes: &[Probe], send: impl FnOnce()) -> Seen {
    let peer = bed.sniffer(&bed.peer_netns(), &bed.tb.peer_link);
    let sib = bed.sniffer(&netns_of(sibling), "net1");
    send();
    let found = |capture: String| -> Vec<String> {
        probes
            .iter()
            .filter(|probe| capture.contains(&hex(probe.marker.as_bytes())))
            .map(|probe| probe.marker.clone())
            .collect()
    };
    Seen {
        peer: found(peer.frames()),
        sibling: found(sib.frames()),
    }
}

/// The MAC `netns` has for neighbour `addr` on `ifname`.
fn neighbour(netns: &Path, ifname: &str, addr: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "neigh", "show", addr, "dev", ifname])
        .output()
        .expect("ip neigh");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["lladdr"].as_str().unwrap_or_default().to_owned()
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The lies, through the qdisc layer and past it, after the peer and the
/// sibling have each other's IPv6 neighbour entries (which a lying
/// advertisement with the override flag would rewrite).
fn tell_lies(bed: &Bed, attacker: &Container, sibling: &Container) -> (Parties, Vec<Probe>, Seen) {
    let p = parties(bed, attacker, sibling);
    let own6 = ipv6_of(&netns_of(attacker), "net1");
    let sib6 = ipv6_of(&netns_of(sibling), "net1");
    bed.tb
        .in_peer_ok(&["ping", "-c1", "-W2", &sib6.to_string()])
        .expect("the peer reaches the sibling over IPv6");
    sibling
        .exec_ok(&["ping", "-c1", "-W2", PEER6])
        .expect("the sibling reaches the peer over IPv6");
    let probes = lies(&p, own6, sib6);
    let seen = sniffing(bed, sibling, &probes, || {
        for bypass in [false, true] {
            let mut argv: Vec<String> = vec!["spoof".into()];
            if bypass {
                argv.push("-b".into());
            }
            argv.push("net1".into());
            argv.extend(probes.iter().map(|probe| hex(&probe.frame)));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            attacker.exec_ok(&argv).expect("spoof runs in the attacker");
        }
    });
    (p, probes, seen)
}

#[test]
fn neighbour_discovery_arp_and_vlan_tags_cannot_carry_a_lie() {
    let Some(bed) = Bed::new("") else { return };
    let attacker = bed.attacker("la");
    let sibling = bed.sibling("ls");
    let (p, probes, seen) = tell_lies(&bed, &attacker, &sibling);
    for probe in &probes {
        // Its own advertisement goes, and so does a router advertisement
        // (README, "What the guard does not stop").
        let allowed = matches!(probe.kind, "na-own" | "ra");
        assert_eq!(
            seen.at_peer(&probe.marker),
            allowed && reaches_peer(probe),
            "{} at the peer",
            probe.marker
        );
        assert_eq!(
            seen.at_sibling(&probe.marker),
            allowed && reaches_sibling(probe),
            "{} at the sibling",
            probe.marker
        );
    }
    let sib6 = ipv6_of(&netns_of(&sibling), "net1").to_string();
    assert_eq!(
        neighbour(&bed.peer_netns(), &bed.tb.peer_link, &sib6),
        mac_text(p.sibling_mac),
        "the peer's entry for the sibling"
    );
    assert_eq!(
        neighbour(&netns_of(&sibling), "net1", PEER6),
        mac_text(p.peer_mac),
        "the sibling's entry for the peer"
    );
    delete(attacker);
    delete(sibling);
    assert_no_guard_tables(&bed.tb, "after both poststops");
}

#[test]
fn without_the_guard_a_lying_neighbour_advertisement_rewrites_the_peers_entry() {
    let Some(bed) = Bed::new("guard = false") else {
        return;
    };
    let attacker = bed.attacker("lu");
    let sibling = bed.sibling("lv");
    let (p, _, seen) = tell_lies(&bed, &attacker, &sibling);
    for marker in [
        "NSBL-na-sibling6-peer",
        "NSBL-na-hop-by-hop-peer",
        "NSBL-vlan0-arp-peer",
    ] {
        assert!(seen.at_peer(marker), "{marker}: {:?}", seen.peer);
    }
    let sib6 = ipv6_of(&netns_of(&sibling), "net1").to_string();
    assert_eq!(
        neighbour(&bed.peer_netns(), &bed.tb.peer_link, &sib6),
        mac_text(p.own_mac),
        "the lie took"
    );
    delete(attacker);
    delete(sibling);
}

#[test]
fn tx_rings_sendmmsg_and_vnet_headers_are_guarded_and_af_xdp_meets_the_parents_checks() {
    let Some(bed) = Bed::new("") else { return };
    let attacker = bed.attacker("ra");
    let sibling = bed.sibling("rs");
    let p = parties(&bed, &attacker, &sibling);
    for mode in ["ring", "ringb", "mmsg", "vnet", "vnetg", "xdp"] {
        let mut probes = probes(&p, mode);
        // The gateway's address from a MAC no guarded link has.
        for (to, dst) in [("sibling", p.sibling_mac), ("peer", p.peer_mac)] {
            let marker = format!("NSBG-{mode}-foreign-arp-gateway-{to}");
            let arp = arp_reply(FOREIGN_MAC, p.peer_ip, dst, p.sibling_ip, marker.as_bytes());
            probes.push(Probe {
                kind: "foreign-arp-gateway",
                to,
                marker,
                frame: ethernet(dst, FOREIGN_MAC, 0x0806, &arp),
            });
        }
        let seen = sniffing(&bed, &sibling, &probes, || {
            let mut argv: Vec<String> = vec!["attack".into(), mode.into(), "net1".into()];
            argv.extend(probes.iter().map(|probe| hex(&probe.frame)));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            attacker
                .exec_ok(&argv)
                .expect("attack runs in the attacker");
        });
        for probe in &probes {
            let (peer, sib) = if mode == "xdp" {
                // AF_XDP skips the filter in the namespace and, in bridge
                // mode, the parent's on the way to a sibling: the sibling
                // gets everything (README, "What the guard does not
                // stop"). Towards the peer only the parent's checks stand:
                // what claims this link's MAC or a guarded address with
                // the wrong partner is dropped; a guarded sibling's MAC
                // with its address, and a MAC and address no guarded link
                // has, look like that sibling's and the host's own.
                let through = matches!(probe.kind, "own" | "sibling-mac" | "foreign-arp-gateway");
                (through && reaches_peer(probe), reaches_sibling(probe))
            } else if probe.kind == "own" {
                (reaches_peer(probe), reaches_sibling(probe))
            } else {
                (false, false)
            };
            assert_eq!(
                seen.at_peer(&probe.marker),
                peer,
                "{} at the peer",
                probe.marker
            );
            assert_eq!(
                seen.at_sibling(&probe.marker),
                sib,
                "{} at the sibling",
                probe.marker
            );
        }
    }
    // The parent's filter does not stand in the way of its own traffic.
    own_traffic_flows(&bed, &attacker);
    delete(attacker);
    delete(sibling);
    assert_no_guard_tables(&bed.tb, "after both poststops");
}

#[test]
fn gc_puts_back_a_parent_table_an_admin_deleted() {
    let Some(bed) = Bed::new("") else { return };
    let tb = &bed.tb;
    let host = PathBuf::from(format!("/run/netns/{}", tb.host_ns));
    let pinned = PinnedNetns::new(tb, "r1");
    let netns = pinned.path.to_str().unwrap();
    ok(
        tb,
        &bed.config,
        &[
            "attach",
            "--netns",
            netns,
            "--id",
            "r1",
            "--network",
            "fast",
        ],
    );
    let table = format!("nsbypass-parent-{}", tb.parent);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host.display()))
        .args(["--", "nft", "delete", "table", "netdev", &table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = ok(tb, &bed.config, &["list", "--json"]);
    assert!(
        list.contains("partial: the parent's filter lacks the link"),
        "{list}"
    );
    ok(tb, &bed.config, &["gc"]);
    assert_eq!(guard_tables_in(&host), [table]);
    let list = ok(tb, &bed.config, &["list", "--json"]);
    assert!(list.contains("\"guard\": \"on\""), "{list}");
    ok(tb, &bed.config, &["detach", "--id", "r1"]);
    assert_no_guard_tables(tb, "after the detach");
}
