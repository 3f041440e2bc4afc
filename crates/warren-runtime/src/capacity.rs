//! What this host can give a sandbox, for validating requested limits.

/// The host's CPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    /// Online CPUs.
    pub cpus: f64,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// Free space in MiB on the filesystem of the data directory (where
    /// sandbox disks are created).
    pub disk_free_mb: u64,
}

impl HostCapacity {
    /// Reads the host: available parallelism and `MemTotal` from /proc/meminfo.
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus,
            memory_mb: parse_mem_total_mb(&meminfo).unwrap_or(u64::MAX / (1024 * 1024)),
            disk_free_mb: u64::MAX / (1024 * 1024),
        }
    }

    /// [`HostCapacity::detect`] with the free space of `data_dir`'s filesystem.
    pub fn detect_for(data_dir: &std::path::Path) -> Self {
        let mut capacity = Self::detect();
        if let Some(free) = free_mb(data_dir) {
            capacity.disk_free_mb = free;
        }
        capacity
    }
}

fn free_mb(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a pointer to a live statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024))
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
