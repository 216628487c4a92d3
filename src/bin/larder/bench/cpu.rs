//! CPU time from `/proc` (Linux): of a process's threads and of the whole machine, sampled at
//! both ends of a measured window, since on a small machine the benchmark client and the
//! servers share the cores. Elsewhere every figure is `None`.

/// `/proc/stat` counts in USER_HZ ticks, which Linux fixes at 100 per second on x86 and arm64.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// One reading: the server's threads (if its pid is known), this process's, and every CPU.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub server_ns: Option<u64>,
    pub client_ns: Option<u64>,
    pub machine_ns: Option<u64>,
}

impl CpuSample {
    /// Reads the counters now.
    pub fn take(server_pid: Option<u32>) -> Self {
        Self {
            server_ns: server_pid.and_then(|pid| process_cpu_ns(&pid.to_string())),
            client_ns: process_cpu_ns("self"),
            machine_ns: machine_busy_ns(),
        }
    }

    /// What was used between `self` (earlier) and `later`.
    pub fn until(self, later: CpuSample) -> CpuSample {
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        CpuSample {
            server_ns: delta(self.server_ns, later.server_ns),
            client_ns: delta(self.client_ns, later.client_ns),
            machine_ns: delta(self.machine_ns, later.machine_ns),
        }
    }
}

/// On-CPU nanoseconds of every live thread of process `pid` ("self" for this one), from
/// `/proc/<pid>/task/*/schedstat` (whose first field is exactly that). Threads that exit
/// between two samples are missed; the servers measured keep theirs.
fn process_cpu_ns(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let on_cpu_ns = |task: std::fs::DirEntry| {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        schedstat.split_whitespace().next()?.parse::<u64>().ok()
    };
    // A thread that ends while being listed has no schedstat left to read: it is skipped.
    Some(tasks.flatten().filter_map(on_cpu_ns).sum())
}

/// Busy and stolen time of all CPUs together, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal ...`).
fn machine_busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal) * NS_PER_USER_HZ_TICK)
}
