//! What this host can give a sandbox, for validating requested limits.

/// The host's CPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    /// Online CPUs.
    pub cpus: f64,
    /// Total memory in MiB.
    pub memory_mb: u64,
}

impl HostCapacity {
    /// Reads the host: available parallelism and `MemTotal` from /proc/meminfo.
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus,
            memory_mb: parse_mem_total_mb(&meminfo).unwrap_or(u64::MAX / (1024 * 1024)),
        }
    }
}

fn parse_mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_total_is_read_in_mib() {
        assert_eq!(
            super::parse_mem_total_mb("MemFree: 1 kB\nMemTotal:  24684084 kB\n"),
            Some(24105)
        );
        assert_eq!(super::parse_mem_total_mb("nothing"), None);
    }
}
