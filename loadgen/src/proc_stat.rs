//! Server CPU and memory from /proc: user+system seconds from `/proc/<pid>/stat` (threads
//! included) and resident memory from `VmRSS` in `/proc/<pid>/status`.

/// /proc reports CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 on Linux.
const USER_HZ: f64 = 100.0;

fn stat_cpu(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime field 14 and stime field 15 (1-based, man 5 proc).
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / USER_HZ
}

/// CPU seconds used so far by the given processes (all their threads).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| stat_cpu(&format!("/proc/{p}/stat")))
        .sum()
}

/// CPU seconds used so far by this process.
pub fn self_cpu_seconds() -> f64 {
    stat_cpu("/proc/self/stat")
}

/// Resident memory of the given processes, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Seconds this process's threads spent runnable but waiting for a CPU (`/proc/self/schedstat`,
/// main thread): time a busy host stole from the load generator.
pub fn self_runqueue_wait_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|ns| ns / 1e9)
        .unwrap_or(0.0)
}

/// Seconds the given processes' threads spent runnable but waiting for a CPU, summed over
/// every thread (`/proc/<pid>/task/*/schedstat`).
pub fn runqueue_wait_seconds(pids: &[u32]) -> f64 {
    let mut ns = 0.0;
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Some(v) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
            {
                ns += v;
            }
        }
    }
    ns / 1e9
}

/// CPU seconds used so far by each thread of the given processes, by thread name (`comm`;
/// threads of one name are summed): where a server's work ran, e.g. on which shard.
pub fn thread_cpu_seconds(pids: &[u32]) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            let cpu = stat_cpu(&t.path().join("stat").to_string_lossy());
            *by_name.entry(name).or_insert(0.0) += cpu;
        }
    }
    by_name
}
