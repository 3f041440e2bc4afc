//! cgroups v1 and v2: one directory per sandbox per hierarchy, with limits.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Limits written into a sandbox's cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupLimits {
    /// CPU quota in cores.
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Process/thread limit.
    pub pids: u64,
}

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {action} {path}: {source}")]
pub struct CgroupError {
    /// What was being done.
    pub action: &'static str,
    /// The cgroup file or directory.
    pub path: PathBuf,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
}

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Per-controller v1 hierarchies under `root` (hybrid hosts included).
    V1 {
        /// Usually /sys/fs/cgroup.
        root: PathBuf,
    },
    /// One unified v2 hierarchy at `root`.
    V2 {
        /// Usually /sys/fs/cgroup.
        root: PathBuf,
    },
}

/// The v1 controllers Warren uses, when mounted.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "freezer"];

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// The CFS quota in microseconds per 100 ms period for `cpus` cores.
pub fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * 100_000.0).round() as u64).max(1000)
}

impl CgroupLayout {
    /// Looks at /sys/fs/cgroup: pure v2 when `cgroup.controllers` is at its top.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// [`CgroupLayout::detect`] with another mount root (for tests).
    pub fn detect_at(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            Self::V2 {
                root: root.to_path_buf(),
            }
        } else {
            Self::V1 {
                root: root.to_path_buf(),
            }
        }
    }

    /// The sandbox's cgroup directories (one per v1 controller, or one for v2).
    pub fn dirs(&self, parent: &str, id: &str) -> Vec<PathBuf> {
        match self {
            Self::V1 { root } => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c))
                .filter(|p| p.is_dir())
                .map(|p| p.join(parent).join(id))
                .collect(),
            Self::V2 { root } => vec![root.join(parent).join(id)],
        }
    }

    /// Creates the sandbox's cgroups and writes its limits. Returns the
    /// `cgroup.procs` files a process writes its pid to in order to join.
    pub fn create(
        &self,
        parent: &str,
        id: &str,
        limits: CgroupLimits,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        if let Self::V2 { root } = self {
            // Controllers must be enabled on every ancestor's subtree_control.
            enable_v2_controllers(root)?;
            let parent_dir = root.join(parent);
            std::fs::create_dir_all(&parent_dir).map_err(|source| CgroupError {
                action: "create",
                path: parent_dir.clone(),
                source,
            })?;
            enable_v2_controllers(&parent_dir)?;
        }
        let dirs = self.dirs(parent, id);
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|source| CgroupError {
                action: "create",
                path: dir.clone(),
                source,
            })?;
            self.write_limits(dir, limits)?;
        }
        Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
    }

    fn write_limits(&self, dir: &Path, limits: CgroupLimits) -> Result<(), CgroupError> {
        let quota = cpu_quota_us(limits.cpus);
        match self {
            Self::V1 { .. } => {
                let controller = dir
                    .parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name);
                match controller.and_then(|c| c.to_str()) {
                    Some("memory") => {
                        write(
                            &dir.join("memory.limit_in_bytes"),
                            &limits.memory_bytes.to_string(),
                        )?;
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            write(&memsw, &limits.memory_bytes.to_string())?;
                        }
                    }
                    Some("pids") => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                    Some("cpu") => {
                        write(&dir.join("cpu.cfs_period_us"), "100000")?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    _ => {}
                }
            }
            Self::V2 { .. } => {
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(&dir.join("cpu.max"), &format!("{quota} 100000"))?;
            }
        }
        Ok(())
    }

    /// Removes the sandbox's cgroups, waiting briefly for exiting processes to
    /// leave. Missing directories are fine.
    pub fn remove(&self, parent: &str, id: &str) -> Result<(), CgroupError> {
        self.kill_all(parent, id);
        for dir in self.dirs(parent, id) {
            remove_dir_patiently(&dir)?;
        }
        Ok(())
    }

    /// SIGKILLs every process still in the sandbox's cgroups and returns how
    /// many were signalled. Used when the sandbox's init is unknown (a daemon
    /// crash during create) or when something escaped its pid namespace's death.
    pub fn kill_all(&self, parent: &str, id: &str) -> usize {
        let mut killed = 0;
        for dir in self.dirs(parent, id) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process listed in the sandbox's own cgroup.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
                // SAFETY: reaps it when it is our child (subreaper); ECHILD otherwise.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            }
        }
        killed
    }

    /// Removes the parent cgroup directories when they are empty (used by
    /// tests that run under their own parent).
    pub fn remove_parent_if_empty(&self, parent: &str) {
        let parents: Vec<PathBuf> = match self {
            Self::V1 { root } => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(parent))
                .collect(),
            Self::V2 { root } => vec![root.join(parent)],
        };
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// The memory cgroup directory (where OOM events and usage are read).
    pub fn memory_dir(&self, parent: &str, id: &str) -> Option<PathBuf> {
        self.dirs(parent, id).into_iter().find(|d| match self {
            Self::V1 { root } => d.starts_with(root.join("memory")),
            Self::V2 { .. } => true,
        })
    }
}

/// Remounts every cgroup2 mount with `favordynmods` unless it already has it,
/// keeping its other options. Moving a process into a cgroup takes a global
/// rwsem whose write side waits for an RCU grace period (about 15 ms here);
/// with this option the wait is gone (about 0.5 ms), at a small cost to every
/// fork and exit. systemd 254+ sets it by default. Returns the mount points
/// changed. The rwsem is shared by v1 and v2, so one cgroup2 mount is enough
/// on a hybrid host.
pub fn favor_dynamic_modifications() -> io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut changed = Vec::new();
    for (mount_point, super_options) in cgroup2_mounts(&mountinfo) {
        if super_options.split(',').any(|o| o == "favordynmods") {
            continue;
        }
        let kept: Vec<&str> = super_options
            .split(',')
            .filter(|o| {
                matches!(
                    *o,
                    "nsdelegate"
                        | "memory_recursiveprot"
                        | "memory_localevents"
                        | "memory_hugetlb_accounting"
                        | "pids_localevents"
                )
            })
            .chain(std::iter::once("favordynmods"))
            .collect();
        let target = std::ffi::CString::new(mount_point.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let data = std::ffi::CString::new(kept.join(","))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C strings that outlive the call; a remount of an
        // existing cgroup2 superblock with new options.
        let ret = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT,
                data.as_ptr().cast(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        changed.push(PathBuf::from(mount_point));
    }
    Ok(changed)
}

/// (mount point, super options) of each cgroup2 mount in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            if right.next()? != "cgroup2" {
                return None;
            }
            let super_options = right.nth(1)?.to_string();
            let mount_point = left.split_whitespace().nth(4)?.to_string();
            Some((mount_point, super_options))
        })
        .collect()
}

/// Kills and removes cgroup parents named `{prefix}-<pid>-…` whose pid is
/// no longer alive: what a test run (or a daemon with a private parent) left
/// when it was killed before its cleanup could run. Returns how many parents
/// were removed.
pub fn remove_orphaned_parents(prefix: &str) -> usize {
    let root = Path::new("/sys/fs/cgroup");
    let roots = V1_CONTROLLERS
        .iter()
        .map(|c| root.join(c))
        .chain(std::iter::once(root.to_path_buf()));
    let mut removed = 0;
    for hierarchy in roots {
        for parent in std::fs::read_dir(&hierarchy)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = parent.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{prefix}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let children: Vec<PathBuf> = std::fs::read_dir(parent.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            for child in &children {
                let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on processes in an orphaned cgroup of ours.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            for child in &children {
                let _ = remove_dir_patiently(child);
            }
            if std::fs::remove_dir(parent.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["memory", "pids", "cpu"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

fn remove_dir_patiently(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(CgroupError {
                    action: "remove",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_and_their_super_options() {
        let text = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mounts(text),
            vec![(
                "/sys/fs/cgroup/unified".to_string(),
                "rw,nsdelegate".to_string()
            )]
        );
    }

    #[test]
    fn quota_is_per_100ms_period_with_a_floor() {
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(0.0001), 1000);
    }

    #[test]
    fn detects_v2_by_its_top_level_controllers_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupLayout::detect_at(dir.path()),
            CgroupLayout::V1 { .. }
        ));
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        let layout = CgroupLayout::detect_at(dir.path());
        assert_eq!(
            layout.dirs("warren", "x"),
            vec![dir.path().join("warren/x")]
        );
    }

    #[test]
    fn v1_dirs_cover_only_mounted_controllers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        let layout = CgroupLayout::detect_at(dir.path());
        assert_eq!(
            layout.dirs("warren", "x"),
            vec![
                dir.path().join("memory/warren/x"),
                dir.path().join("pids/warren/x")
            ]
        );
    }
}
