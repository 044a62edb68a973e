//! Just enough of the bpf(2) syscall to widen a cgroup v2 device filter.
//!
//! runc enforces a container's device rules on cgroup v2 with an eBPF
//! program attached to the container's cgroup. To let the container use a
//! few more devices without touching runc's rules, each attached program
//! is replaced by a copy with a prelude: the prelude allows exactly those
//! devices, anything else falls through into the original instructions,
//! whose verdict then stands. (A tail call into the original would not
//! survive the hook: the kernel empties a program array when the last
//! user-space fd to it closes.) Eligible programs are self-contained, as
//! runc's and systemd's are: no maps, no helper calls.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;

const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;

/// `BPF_DEVCG_DEV_*`: the device type in the low 16 bits of `access_type`.
pub const DEV_BLOCK: i32 = 1;
pub const DEV_CHAR: i32 = 2;

#[repr(C)]
#[derive(Default)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to the fields read here.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T, op: &str) -> Result<i64> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`,
    // zero-initialised beyond the fields we set, and lives for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        return Err(Error::new(op, std::io::Error::last_os_error()));
    }
    Ok(rc)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new fd that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// The device programs on a cgroup.
pub struct Attached {
    /// Attached to the cgroup itself.
    pub own: Vec<OwnedFd>,
    /// Whether they were attached with `BPF_F_ALLOW_MULTI` (the only mode
    /// that can be replaced in place).
    pub multi: bool,
    /// How many programs judge its devices in all, inherited ones included.
    pub effective: usize,
}

/// Device programs attached to `cgroup`.
pub fn device_programs(cgroup: BorrowedFd) -> Result<Attached> {
    let mut ids = [0u32; 64];
    let own_query = query(cgroup, 0, &mut ids)?;
    let multi = own_query.attach_flags & BPF_F_ALLOW_MULTI != 0;
    let mut own = Vec::new();
    for &id in &ids[..own_query.prog_cnt as usize] {
        let mut get = GetFdById {
            id,
            ..GetFdById::default()
        };
        own.push(owned(bpf(
            BPF_PROG_GET_FD_BY_ID,
            &mut get,
            "open a device program",
        )?));
    }
    let effective = query(cgroup, BPF_F_QUERY_EFFECTIVE, &mut ids)?.prog_cnt as usize;
    Ok(Attached {
        own,
        multi,
        effective,
    })
}

/// `BPF_PROG_QUERY` for device programs on `cgroup`, ids into `ids`.
fn query(cgroup: BorrowedFd, flags: u32, ids: &mut [u32]) -> Result<ProgQuery> {
    let mut query = ProgQuery {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        query_flags: flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQuery::default()
    };
    bpf(
        BPF_PROG_QUERY,
        &mut query,
        "query the cgroup's device programs",
    )?;
    Ok(query)
}

/// A device the widened filter lets through, any access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// [`DEV_CHAR`] or [`DEV_BLOCK`].
    pub kind: i32,
    pub major: u32,
    pub minor: u32,
}

/// Loads a copy of `original` that first lets `devices` through.
pub fn widen(original: BorrowedFd, devices: &[Allowed]) -> Result<OwnedFd> {
    let body = instructions(original)?;
    let insns = program(devices, &body);
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"nsbypass");
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoad::default()
    };
    let program = match bpf(BPF_PROG_LOAD, &mut load, "load the widened device program") {
        Ok(fd) => fd,
        Err(e) => {
            // Load again with the verifier's log, for its last word.
            let mut log = vec![0u8; 1 << 20];
            load.log_level = 1;
            load.log_size = log.len() as u32;
            load.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut load, "load the widened device program").map(owned);
            let log = String::from_utf8_lossy(&log);
            let last = log
                .trim_end_matches('\0')
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned();
            return Err(Error::new(
                e.op,
                std::io::Error::new(e.cause.kind(), format!("{} (verifier: {last})", e.cause)),
            ));
        }
    };
    Ok(owned(program))
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (whose buffers the caller set).
fn prog_info(program: BorrowedFd, info: &mut ProgInfo, op: &str) -> Result<()> {
    let mut by_fd = InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut by_fd, op).map(drop)
}

/// The original program's instructions as the kernel holds them, refusing
/// programs a copy could not reproduce (maps, helper calls).
fn instructions(program: BorrowedFd) -> Result<Vec<Insn>> {
    let mut info = ProgInfo::default();
    prog_info(program, &mut info, "inspect the device program")?;
    let count = info.xlated_prog_len as usize / std::mem::size_of::<Insn>();
    let mut insns = vec![insn(0, 0, 0, 0, 0); count];
    let mut info = ProgInfo {
        xlated_prog_len: (count * std::mem::size_of::<Insn>()) as u32,
        xlated_prog_insns: insns.as_mut_ptr() as u64,
        ..ProgInfo::default()
    };
    prog_info(program, &mut info, "read the device program")?;
    let self_contained = info.nr_map_ids == 0
        && !insns
            .iter()
            .any(|i| i.code == CALL || (i.code == LD_DW && i.regs >> 4 != 0));
    if count == 0 || !self_contained {
        return Err(Error::new(
            "copy the device program",
            std::io::Error::other("it uses maps or helper calls, so nsbypass cannot extend it"),
        ));
    }
    Ok(insns)
}

/// Atomically puts `new` in `old`'s place on `cgroup`.
pub fn replace(cgroup: BorrowedFd, old: BorrowedFd, new: BorrowedFd) -> Result<()> {
    let mut attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: new.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI | BPF_F_REPLACE,
        replace_bpf_fd: old.as_raw_fd() as u32,
    };
    bpf(
        BPF_PROG_ATTACH,
        &mut attach,
        "replace the cgroup's device program",
    )
    .map(drop)
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JA: u8 = 0x05; // BPF_JMP | BPF_JA
const LD_DW: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// ```text
///   r2 = ctx->access_type & 0xffff; r3 = ctx->major; r4 = ctx->minor
///   for each device: if (r2, r3, r4) == device: goto allow
///   goto original
/// allow:
///   return 1
/// original:
///   ...the original program, unchanged (its jumps are relative, and it
///   reads nothing but r1 = ctx, which the prelude leaves alone)
/// ```
fn program(devices: &[Allowed], original: &[Insn]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 4, 0),
        insn(LDX_W, 4, 1, 8, 0),
    ];
    // Each device block is 4 instructions; from block i's JA, `allow` is
    // past the later blocks and the one `goto original`.
    for (i, d) in devices.iter().enumerate() {
        let later = (devices.len() - i - 1) * 4;
        p.push(insn(JNE_K, 2, 0, 3, d.kind));
        p.push(insn(JNE_K, 3, 0, 2, d.major as i32));
        p.push(insn(JNE_K, 4, 0, 1, d.minor as i32));
        p.push(insn(JA, 0, 0, (later + 1) as i16, 0));
    }
    p.extend([
        insn(JA, 0, 0, 2, 0),
        insn(MOV_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p.extend_from_slice(original);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_to_allow_lands_on_return_one_and_the_rest_on_the_original() {
        let devices = [
            Allowed {
                kind: DEV_CHAR,
                major: 10,
                minor: 229,
            },
            Allowed {
                kind: DEV_BLOCK,
                major: 7,
                minor: 0,
            },
            Allowed {
                kind: DEV_CHAR,
                major: 240,
                minor: 1,
            },
        ];
        let original = [insn(MOV_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)];
        let p = program(&devices, &original);
        let start = p.len() - original.len();
        assert_eq!(p[start..], original);
        let allow = start - 2;
        assert_eq!((p[allow].code, p[allow].imm), (MOV_K, 1));
        let target = |pc: usize| (pc as i64 + 1 + p[pc].off as i64) as usize;
        let jumps: Vec<usize> = (0..start)
            .filter(|&pc| p[pc].code == JA)
            .map(target)
            .collect();
        assert_eq!(jumps, [allow, allow, allow, start]);
        // A mismatch skips to the next block; the last one's to `goto original`.
        assert_eq!(target(4), 8);
        assert_eq!(target(4 + 4 * 2 + 2), 4 + 4 * 3);
    }
}
