//! What the kernel says about a QEMU process: `/proc/PID/{comm,cmdline,stat,status,io,cgroup}`
//! and the process's cgroup v2 directory.
//!
//! Each reader is a thin file read around a pure parser, and every reader returns `None`
//! rather than an error: a guest that exits between two reads, or a file the collector may
//! not read, leaves a gap in the metrics, never a failed discovery.

use std::fs;
use std::path::{Path, PathBuf};

pub use super::CgroupStats;
use super::VmState;

/// Clock ticks per second of `utime`/`stime` (`USER_HZ`; 100 on every mainstream Linux).
pub const USER_HZ: u64 = 100;

/// Whether a process's `comm` names a QEMU system emulator (`comm` is cut at 15 bytes, so
/// `qemu-system-x86_64` shows as `qemu-system-x86`).
#[must_use]
pub fn is_qemu_comm(comm: &str) -> bool {
    let comm = comm.trim_end();
    comm.starts_with("qemu-system-") || comm == "qemu-kvm" || comm == "kvm"
}

/// PIDs whose `comm` is a QEMU system emulator, ascending. The cheap check: one small
/// read per process.
#[must_use]
pub fn find_qemu_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                .is_ok_and(|c| is_qemu_comm(&c))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The process's argument vector, raw (NUL-separated).
#[must_use]
pub fn read_cmdline(proc_root: &Path, pid: u32) -> Option<Vec<u8>> {
    fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()
}

/// Whether the process exists and is not a zombie.
#[must_use]
pub fn is_alive(proc_root: &Path, pid: u32) -> bool {
    read_stat(proc_root, pid).is_some_and(|s| !s.is_dead())
}

/// A path a process gave relative to its working directory, as seen from here.
#[must_use]
pub fn resolve_in_cwd(proc_root: &Path, pid: u32, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        proc_root.join(pid.to_string()).join("cwd").join(path)
    }
}

/// The fields of `/proc/PID/stat` discovery uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter process state (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, …).
    pub state: char,
    /// User time, clock ticks (all threads).
    pub utime: u64,
    /// System time, clock ticks (all threads).
    pub stime: u64,
}

impl ProcStat {
    /// CPU time (user + system), milliseconds.
    #[must_use]
    pub fn cpu_time_ms(&self) -> u64 {
        (self.utime + self.stime).saturating_mul(1000) / USER_HZ
    }

    /// A zombie or a process being torn down.
    #[must_use]
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// What the process state says about the guest, with its `proc:` detail. A process
    /// stopped by a signal or a tracer holds its guest still; anything else alive is taken
    /// as running (only QMP or libvirt can tell a paused guest in a live process).
    #[must_use]
    pub fn vm_state(&self) -> (VmState, String) {
        let state = match self.state {
            'T' | 't' => VmState::Paused,
            'Z' | 'X' | 'x' => VmState::Shutdown,
            _ => VmState::Running,
        };
        (state, format!("proc:{}", self.state))
    }
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields after it are found from the *last* `)`.
#[must_use]
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// Reads and parses `/proc/PID/stat`.
#[must_use]
pub fn read_stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?)
}

/// `VmRSS` from `/proc/PID/status`, bytes.
#[must_use]
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Reads the process's resident memory, bytes.
#[must_use]
pub fn read_rss_bytes(proc_root: &Path, pid: u32) -> Option<u64> {
    parse_status_rss(&fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?)
}

/// Storage I/O of a process (`/proc/PID/io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcIo {
    /// Bytes fetched from storage.
    pub read_bytes: u64,
    /// Bytes sent to storage.
    pub write_bytes: u64,
}

/// Parses `/proc/PID/io`.
#[must_use]
pub fn parse_io(text: &str) -> Option<ProcIo> {
    let read_bytes = key_value(text, "read_bytes:")?;
    let write_bytes = key_value(text, "write_bytes:")?;
    Some(ProcIo {
        read_bytes,
        write_bytes,
    })
}

/// Reads `/proc/PID/io` (readable by the process owner and root only).
#[must_use]
pub fn read_io(proc_root: &Path, pid: u32) -> Option<ProcIo> {
    parse_io(&fs::read_to_string(proc_root.join(pid.to_string()).join("io")).ok()?)
}

fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The cgroup v2 path of a process from `/proc/PID/cgroup` (the `0::PATH` line).
#[must_use]
pub fn parse_cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The cgroup that belongs to the guest: libvirt puts QEMU's emulator thread in
/// `…/machine-qemu….scope/libvirt/emulator` and accounts the guest on the scope, so that
/// scope is used; any other cgroup counts only when the process is its only member (the
/// root cgroup never does).
fn guest_cgroup(cgroup_root: &Path, path: &str, pid: u32) -> Option<String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    if let Some(scope) = trimmed.strip_suffix("/libvirt/emulator") {
        return (!scope.is_empty()).then(|| scope.to_string());
    }
    let procs = fs::read_to_string(
        cgroup_root
            .join(trimmed.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .ok()?;
    let members: Vec<&str> = procs.split_whitespace().collect();
    (members == [pid.to_string().as_str()]).then(|| trimmed.to_string())
}

/// `usage_usec` from `cpu.stat`.
#[must_use]
pub fn parse_cpu_stat_usage(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Sums `rbytes` and `wbytes` over the devices of `io.stat`.
#[must_use]
pub fn parse_io_stat(text: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut write = 0u64;
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            write = write.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, write)
}

/// Reads the statistics of the guest's own cgroup, when it has one.
#[must_use]
pub fn read_cgroup_stats(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<CgroupStats> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let path = guest_cgroup(cgroup_root, &parse_cgroup_v2_path(&text)?, pid)?;
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    let io = fs::read_to_string(dir.join("io.stat"))
        .ok()
        .map(|t| parse_io_stat(&t));
    Some(CgroupStats {
        cpu_usage_usec: fs::read_to_string(dir.join("cpu.stat"))
            .ok()
            .and_then(|t| parse_cpu_stat_usage(&t)),
        memory_current_bytes: read_u64(&dir.join("memory.current")),
        io_read_bytes: io.map(|(r, _)| r),
        io_write_bytes: io.map(|(_, w)| w),
        path,
    })
}

/// A file holding one unsigned number.
#[must_use]
pub fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_names() {
        assert!(is_qemu_comm("qemu-system-x86\n"));
        assert!(is_qemu_comm("qemu-system-aar"));
        assert!(is_qemu_comm("qemu-kvm"));
        assert!(!is_qemu_comm("qemu-img"));
        assert!(!is_qemu_comm("qemu-ga"));
        assert!(!is_qemu_comm("bash"));
    }

    #[test]
    fn stat_with_a_hostile_command_name() {
        let text = "77 (qemu) S (x)) T 1 77 77 0 -1 4194560 1 0 0 0 250 150 0 0 20 0 4 0 9 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'T');
        assert_eq!(stat.cpu_time_ms(), 4000);
        assert_eq!(stat.vm_state(), (VmState::Paused, "proc:T".into()));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn zombie_is_dead() {
        let stat = parse_stat("5 (qemu-system-x86) Z 1 5 5 0 -1 0 0 0 0 0 1 1 0 0").unwrap();
        assert!(stat.is_dead());
    }

    #[test]
    fn status_io_and_cgroup_files() {
        assert_eq!(
            parse_status_rss("Name:\tq\nVmRSS:\t   38736 kB\nThreads:\t5\n"),
            Some(38736 * 1024)
        );
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
        assert_eq!(
            parse_io("rchar: 320811\nwchar: 64\nsyscr: 74\nsyscw: 8\nread_bytes: 57344\nwrite_bytes: 16384\ncancelled_write_bytes: 0\n"),
            Some(ProcIo {
                read_bytes: 57344,
                write_bytes: 16384
            })
        );
        assert_eq!(
            parse_cgroup_v2_path("9:name=systemd:/\n4:memory:/x\n0::/machine.slice/a.scope\n"),
            Some("/machine.slice/a.scope".into())
        );
        assert_eq!(parse_cgroup_v2_path("4:memory:/x\n"), None);
        assert_eq!(
            parse_cpu_stat_usage("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n"),
            Some(1234)
        );
        assert_eq!(
            parse_io_stat("8:0 rbytes=100 wbytes=200 rios=1 wios=2\n253:1 rbytes=5 wbytes=6\n"),
            (105, 206)
        );
    }

    #[test]
    fn libvirt_emulator_cgroup_maps_to_its_scope_and_shared_cgroups_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(
            guest_cgroup(
                root,
                "/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt/emulator",
                9
            ),
            Some("/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope".into())
        );
        assert_eq!(guest_cgroup(root, "/", 9), None);
        std::fs::create_dir_all(root.join("user.slice")).unwrap();
        std::fs::write(root.join("user.slice/cgroup.procs"), "9\n10\n").unwrap();
        assert_eq!(guest_cgroup(root, "/user.slice", 9), None);
        std::fs::create_dir_all(root.join("vm.scope")).unwrap();
        std::fs::write(root.join("vm.scope/cgroup.procs"), "9\n").unwrap();
        assert_eq!(guest_cgroup(root, "/vm.scope", 9), Some("/vm.scope".into()));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let proc_root = Path::new("/proc");
        let stat = read_stat(proc_root, me).unwrap();
        assert!(!stat.is_dead());
        assert!(read_rss_bytes(proc_root, me).unwrap() > 0);
        assert!(read_cmdline(proc_root, me).is_some());
        assert_eq!(
            resolve_in_cwd(proc_root, me, Path::new("q.sock")),
            proc_root.join(me.to_string()).join("cwd/q.sock")
        );
    }

    proptest::proptest! {
        /// /proc files of other processes are outside input.
        #[test]
        fn any_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_stat(&text);
            let _ = parse_status_rss(&text);
            let _ = parse_io(&text);
            let _ = parse_cgroup_v2_path(&text);
            let _ = parse_cpu_stat_usage(&text);
            let _ = parse_io_stat(&text);
        }
    }
}
