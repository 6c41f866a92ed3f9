//! Measuring the machine for admission: available memory as the kernel counts it, and
//! the memory and CPU each running agent's process tree uses.
//!
//! Owns: reading `/proc/meminfo`, the cgroup files of both versions, and `/proc/<pid>/stat`,
//! and the pure parsers of their contents (unit-tested on real file contents).
//! Must never: run on the actix thread (everything here reads files: the governor calls it
//! on the blocking pool), or decide anything: `model::admission` decides.
//!
//! "Available" is what the kernel could hand out without swapping: `MemAvailable` on the
//! machine; inside a cgroup with a limit, the limit minus the working set (usage minus the
//! inactive file cache, the figure the kernel reclaims first), the lower of the two. Taking
//! the cgroup's limit minus its usage instead counts the page cache as used, and a large
//! cache then holds every start back for good.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A cgroup v1 limit at or above this means "no limit" (the kernel writes 2^63 rounded
/// down to a page).
const V1_UNLIMITED: u64 = 1 << 60;

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The value of `key` in a cgroup `memory.stat` file.
pub fn parse_stat_value(memory_stat: &str, key: &str) -> Option<u64> {
    memory_stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A cgroup's memory figures, read from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// `None`: no limit at this level.
    pub limit: Option<u64>,
    pub usage: u64,
    pub inactive_file: u64,
}

impl CgroupMemory {
    /// cgroup v2: `memory.max` ("max" or bytes), `memory.current`, `memory.stat`.
    pub fn from_v2(max: &str, current: &str, stat: &str) -> Option<CgroupMemory> {
        let max = max.trim();
        let limit = if max == "max" {
            None
        } else {
            Some(max.parse().ok()?)
        };
        Some(CgroupMemory {
            limit,
            usage: current.trim().parse().ok()?,
            inactive_file: parse_stat_value(stat, "inactive_file").unwrap_or(0),
        })
    }

    /// cgroup v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `memory.stat` (its
    /// `total_` figures count the whole subtree, as the usage does).
    pub fn from_v1(limit: &str, usage: &str, stat: &str) -> Option<CgroupMemory> {
        let limit: u64 = limit.trim().parse().ok()?;
        Some(CgroupMemory {
            limit: (limit < V1_UNLIMITED).then_some(limit),
            usage: usage.trim().parse().ok()?,
            inactive_file: parse_stat_value(stat, "total_inactive_file")
                .or_else(|| parse_stat_value(stat, "inactive_file"))
                .unwrap_or(0),
        })
    }

    /// What the cgroup can still take: its limit minus its working set.
    pub fn available(&self) -> Option<u64> {
        let working_set = self.usage.saturating_sub(self.inactive_file);
        self.limit.map(|l| l.saturating_sub(working_set))
    }
}

/// The memory cgroup paths of this process, from `/proc/self/cgroup`: the v2 path (the
/// `0::` line) and the v1 path of the `memory` controller.
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// The directories from a cgroup's own up to the mount's root. A path that does not
/// exist under the mount (a container whose cgroup namespace hides it) means the mount's
/// root is the cgroup itself.
fn cgroup_dirs(mount: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut dir = mount.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        dir = mount.to_path_buf();
    }
    while dir.starts_with(mount) {
        dirs.push(dir.clone());
        if !dir.pop() {
            break;
        }
    }
    dirs
}

fn read(dir: &Path, file: &str) -> Option<String> {
    read_small(&dir.join(file))
}

/// Reads a small `/proc` or `/sys` file whole. These report a size of 0, so
/// `read_to_string` starts with a 32-byte buffer and doubles it, one `read` each time
/// (seven for `/proc/meminfo`); one buffer of the usual size takes two.
pub fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::with_capacity(8 << 10);
    file.read_to_end(&mut bytes).ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether a cgroup v1 `memory.limit_in_bytes` or v2 `memory.max` sets a limit. A level
/// without one is skipped without reading its usage and statistics.
fn sets_limit(limit: &str) -> bool {
    let limit = limit.trim();
    limit != "max" && limit.parse::<u64>().is_ok_and(|l| l < V1_UNLIMITED)
}

/// The least any enclosing cgroup (v1 or v2) can still take; `None` when none is limited.
pub fn cgroup_available() -> Option<u64> {
    let text = read_small(Path::new("/proc/self/cgroup"))?;
    let (v2, v1) = parse_proc_cgroup(&text);
    let root = Path::new("/sys/fs/cgroup");
    let mut least: Option<u64> = None;
    let mut take = |figure: Option<CgroupMemory>| {
        if let Some(a) = figure.and_then(|m| m.available()) {
            least = Some(least.map_or(a, |l| l.min(a)));
        }
    };
    if let Some(path) = v1 {
        for dir in cgroup_dirs(&root.join("memory"), &path) {
            take((|| {
                let limit = read(&dir, "memory.limit_in_bytes").filter(|l| sets_limit(l))?;
                CgroupMemory::from_v1(
                    &limit,
                    &read(&dir, "memory.usage_in_bytes")?,
                    &read(&dir, "memory.stat")?,
                )
            })());
        }
    }
    if let Some(path) = v2 {
        for dir in cgroup_dirs(root, &path) {
            take((|| {
                let max = read(&dir, "memory.max").filter(|m| sets_limit(m))?;
                CgroupMemory::from_v2(
                    &max,
                    &read(&dir, "memory.current")?,
                    &read(&dir, "memory.stat")?,
                )
            })());
        }
    }
    least
}

/// Memory available to new work: the machine's `MemAvailable`, or less inside a limited
/// cgroup.
pub fn available_memory() -> u64 {
    let machine = read_small(Path::new("/proc/meminfo"))
        .and_then(|m| parse_meminfo_available(&m))
        .unwrap_or(0);
    match cgroup_available() {
        Some(c) => c.min(machine),
        None => machine,
    }
}

/// One line of `/proc/<pid>/stat`, the fields admission needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    /// Resident pages.
    pub rss_pages: u64,
    /// CPU time of the process and of its reaped children, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
pub fn parse_proc_stat(line: &str) -> Option<ProcStat> {
    let pid = line.split_once(' ')?.0.parse().ok()?;
    let after = &line[line.rfind(')')? + 2..];
    // Fields from 3 (state) on: ppid is 4, utime..cstime 14..17, rss 24.
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        ppid: field(4)? as u32,
        rss_pages: field(24)?,
        cpu_ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

/// Every process now: a snapshot of `/proc`.
pub fn process_table() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<u32>().ok()?;
        parse_proc_stat(&read_small(&e.path().join("stat"))?)
    })
    .collect()
}

/// What one process tree uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeUsage {
    pub rss_bytes: u64,
    pub cpu_ticks: u64,
    /// Time the tree's live processes ran or waited to run, in ns (`/proc/<pid>/schedstat`):
    /// what they would have run on an idle machine. `None` where the kernel keeps no
    /// such figure.
    pub demand_ns: Option<u64>,
    pub pids: Vec<u32>,
}

/// Run time plus run-queue wait of `/proc/<pid>/schedstat`, in ns.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    let mut f = text.split_whitespace();
    let run: u64 = f.next()?.parse().ok()?;
    let wait: u64 = f.next()?.parse().ok()?;
    Some(run + wait)
}

/// Samples the trees under `roots` now: `tree_usage` of a fresh process table, with the
/// CPU demand of each tree's live processes.
pub fn sample_trees(roots: &[u32], page_size: u64) -> HashMap<u32, TreeUsage> {
    if roots.is_empty() {
        return HashMap::new();
    }
    let mut trees = tree_usage(&process_table(), roots, page_size);
    for usage in trees.values_mut() {
        usage.demand_ns = usage
            .pids
            .iter()
            .map(|pid| {
                read_small(Path::new(&format!("/proc/{pid}/schedstat")))
                    .and_then(|t| parse_schedstat(&t))
            })
            .sum();
    }
    trees
}

/// The memory and CPU time of each root's descendants (the root itself, a run's small
/// supervising shim, excluded: what counts is the agent it runs and everything the agent
/// started, whatever process group they moved to).
pub fn tree_usage(table: &[ProcStat], roots: &[u32], page_size: u64) -> HashMap<u32, TreeUsage> {
    let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p);
    }
    roots
        .iter()
        .map(|&root| {
            let mut usage = TreeUsage::default();
            let mut stack = vec![root];
            while let Some(pid) = stack.pop() {
                for child in children.get(&pid).into_iter().flatten() {
                    usage.rss_bytes += child.rss_pages * page_size;
                    usage.cpu_ticks += child.cpu_ticks;
                    usage.pids.push(child.pid);
                    stack.push(child.pid);
                }
            }
            (root, usage)
        })
        .collect()
}

/// The page size and the clock ticks per second of this machine.
pub fn page_size_and_ticks() -> (u64, u64) {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    (
        u64::try_from(page).unwrap_or(4096).max(1),
        u64::try_from(ticks).unwrap_or(100).max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Taken from this development machine (cgroup v1, a 22 GiB page cache).
    const MEMINFO: &str = "MemTotal:       24731708 kB\nMemFree:          591200 kB\nMemAvailable:   23601320 kB\nBuffers:          139428 kB\nCached:         22506920 kB\n";
    const V1_STAT: &str = "cache 32325632\nrss 1785856\ninactive_file 3297280\nactive_file 19959808\nhierarchical_memory_limit 9223372036854771712\ntotal_cache 23188918272\ntotal_rss 611213312\ntotal_inactive_file 6592712704\ntotal_active_file 16587137024\n";
    // From a cgroup v2 container limited to 8 GiB (a systemd-run scope on kernel 6.8).
    const V2_STAT: &str = "anon 1207959552\nfile 5905580032\nkernel 52428800\nshmem 0\nactive_anon 1190182912\ninactive_anon 17776640\nactive_file 2147483648\ninactive_file 3758096384\nunevictable 0\n";

    #[test]
    fn a_level_without_a_memory_limit_is_told_from_one_with() {
        assert!(!sets_limit("max\n"));
        assert!(!sets_limit("9223372036854771712\n")); // v1's "no limit"
        assert!(sets_limit("17179869184\n"));
        assert!(!sets_limit("garbage"));
    }

    #[test]
    fn a_small_file_is_read_whole_even_past_the_first_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        assert!(text.len() > 8 << 10);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_small(&path).as_deref(), Some(text.as_str()));
        assert_eq!(read_small(&dir.path().join("absent")), None);
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        assert_eq!(parse_meminfo_available(MEMINFO), Some(23_601_320 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_v1_cgroup_counts_its_inactive_page_cache_as_available() {
        let limited = CgroupMemory::from_v1("25769803776\n", "23774928896\n", V1_STAT).unwrap();
        assert_eq!(limited.inactive_file, 6_592_712_704);
        // 24 GiB limit - (23.77 GB used - 6.59 GB inactive cache): 7.3 GB, not the
        // 2 GB that limit minus usage would say.
        assert_eq!(
            limited.available(),
            Some(25_769_803_776 - (23_774_928_896 - 6_592_712_704))
        );
        let unlimited =
            CgroupMemory::from_v1("9223372036854771712\n", "23774928896\n", V1_STAT).unwrap();
        assert_eq!(unlimited.available(), None);
    }

    #[test]
    fn a_v2_cgroup_counts_its_inactive_page_cache_as_available() {
        let limited = CgroupMemory::from_v2("8589934592\n", "7165968384\n", V2_STAT).unwrap();
        assert_eq!(
            limited.available(),
            Some(8_589_934_592 - (7_165_968_384 - 3_758_096_384))
        );
        let unlimited = CgroupMemory::from_v2("max\n", "7165968384\n", V2_STAT).unwrap();
        assert_eq!(unlimited.available(), None);
        assert_eq!(CgroupMemory::from_v2("max", "garbage", V2_STAT), None);
    }

    #[test]
    fn the_memory_cgroup_is_found_in_either_version() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/660f29b641b5\n3:cpuset:/\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            (Some("/".into()), Some("/process_api/660f29b641b5".into()))
        );
        let v2 = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(
            parse_proc_cgroup(v2),
            (
                Some("/user.slice/user-1000.slice/session-3.scope".into()),
                None
            )
        );
        let joined = "5:cpu,memory:/docker/abc\n";
        assert_eq!(
            parse_proc_cgroup(joined),
            (None, Some("/docker/abc".into()))
        );
    }

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) agent) S 4241 4242 4242 0 -1 4194560 2000 0 0 0 150 50 7 3 20 0 1 0 9999 1610612736 393216 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                pid: 4242,
                ppid: 4241,
                rss_pages: 393_216,
                cpu_ticks: 210,
            })
        );
    }

    #[test]
    fn a_tree_sums_every_descendant_but_not_its_root() {
        let p = |pid, ppid, rss_pages, cpu_ticks| ProcStat {
            pid,
            ppid,
            rss_pages,
            cpu_ticks,
        };
        // shim 10 -> agent 11 -> tool 12 (moved to its own group: still counted); 20 is
        // another run's shim.
        let table = [
            p(10, 1, 100, 5),
            p(11, 10, 1000, 40),
            p(12, 11, 500, 10),
            p(20, 1, 100, 1),
            p(21, 20, 7, 0),
        ];
        let usage = tree_usage(&table, &[10, 20, 30], 4096);
        assert_eq!(
            usage[&10],
            TreeUsage {
                rss_bytes: 1500 * 4096,
                cpu_ticks: 50,
                demand_ns: None,
                pids: vec![11, 12],
            }
        );
        assert_eq!(usage[&20].rss_bytes, 7 * 4096);
        assert_eq!(usage[&30], TreeUsage::default());
    }

    #[test]
    fn cpu_demand_is_run_time_plus_run_queue_wait() {
        // A busy loop on a loaded machine: 34 ms run, 65 ms waiting for a core.
        assert_eq!(
            parse_schedstat("33969482 64758985 1031\n"),
            Some(98_728_467)
        );
        assert_eq!(parse_schedstat(""), None);
    }

    /// On the machine running the tests: the figure follows `MemAvailable` (page cache
    /// counted as available), never the far smaller "free".
    #[test]
    fn available_memory_tracks_mem_available_not_free() {
        // Fill the page cache with a file written and read back, so that "free" and
        // "available" are far apart.
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("cache-filler");
        std::fs::write(&big, vec![7u8; 512 << 20]).unwrap();
        assert_eq!(std::fs::read(&big).unwrap().len(), 512 << 20);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let mem_free: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemFree:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let mem_free = mem_free * 1024;
        let mem_available = parse_meminfo_available(&meminfo).unwrap();
        let measured = available_memory();
        assert!(measured <= mem_available + (64 << 20));
        if cgroup_available().is_none() {
            // No limited cgroup: exactly the kernel's figure (within what moved between
            // the two reads).
            assert!(
                measured.abs_diff(mem_available) < 256 << 20,
                "{measured} vs {mem_available}"
            );
        }
        // The 512 MiB just cached count as available, not as used.
        assert!(
            measured > mem_free + (256 << 20),
            "{measured} vs free {mem_free}"
        );
    }
}
