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
        // SIGKILL takes effect in a frozen cgroup only once it is thawed.
        // A thaw that fails shows up below: the cgroup stays busy and its
        // removal reports the error.
        let _ = self.thaw(parent, id, Duration::from_secs(5));
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

    /// The directory whose files freeze the sandbox: the v1 `freezer`
    /// controller's, or the v2 cgroup itself. `None` on a v1 host without
    /// the freezer controller.
    pub fn freezer_dir(&self, parent: &str, id: &str) -> Option<PathBuf> {
        match self {
            Self::V1 { root } => {
                let controller = root.join("freezer");
                controller
                    .is_dir()
                    .then(|| controller.join(parent).join(id))
            }
            Self::V2 { root } => Some(root.join(parent).join(id)),
        }
    }

    /// Freezes every process of the sandbox and waits (up to `timeout`)
    /// until the kernel reports the cgroup frozen.
    pub fn freeze(&self, parent: &str, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        let dir = self.require_freezer(parent, id)?;
        match self.freezer_kind() {
            FreezerKind::V1 => freeze_v1(&dir, timeout),
            kind => {
                write(&dir.join(kind.control_file()), kind.value(true))?;
                wait_frozen_state(&dir, kind, true, timeout)
            }
        }
    }

    /// Thaws the sandbox's processes and waits (up to `timeout`) until the
    /// kernel reports the cgroup thawed. A missing cgroup is fine (the
    /// sandbox is gone).
    pub fn thaw(&self, parent: &str, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        let Some(dir) = self.freezer_dir(parent, id) else {
            return Ok(());
        };
        if !dir.is_dir() {
            return Ok(());
        }
        let kind = self.freezer_kind();
        write(&dir.join(kind.control_file()), kind.value(false))?;
        wait_frozen_state(&dir, kind, false, timeout)
    }

    /// Whether the kernel reports the sandbox's cgroup frozen (`false` when
    /// there is no freezer or no cgroup).
    pub fn is_frozen(&self, parent: &str, id: &str) -> bool {
        self.freezer_dir(parent, id)
            .and_then(|dir| read_frozen_state(&dir, self.freezer_kind()).ok())
            .unwrap_or(false)
    }

    fn freezer_kind(&self) -> FreezerKind {
        match self {
            Self::V1 { .. } => FreezerKind::V1,
            Self::V2 { .. } => FreezerKind::V2,
        }
    }

    fn require_freezer(&self, parent: &str, id: &str) -> Result<PathBuf, CgroupError> {
        let dir = self.freezer_dir(parent, id).ok_or_else(|| CgroupError {
            action: "freeze (no freezer controller mounted)",
            path: self.root().join("freezer"),
            source: io::Error::from(io::ErrorKind::Unsupported),
        })?;
        if !dir.is_dir() {
            return Err(CgroupError {
                action: "freeze (no such cgroup)",
                path: dir,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        Ok(dir)
    }

    fn root(&self) -> &Path {
        match self {
            Self::V1 { root } | Self::V2 { root } => root,
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

/// The freezer interface of a cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreezerKind {
    /// `freezer.state`: write FROZEN/THAWED, read back FREEZING while in
    /// progress and FROZEN once done.
    V1,
    /// `cgroup.freeze`: write 1/0; `cgroup.events` says `frozen 1` once done.
    V2,
}

impl FreezerKind {
    fn control_file(self) -> &'static str {
        match self {
            Self::V1 => "freezer.state",
            Self::V2 => "cgroup.freeze",
        }
    }

    fn value(self, frozen: bool) -> &'static str {
        match (self, frozen) {
            (Self::V1, true) => "FROZEN",
            (Self::V1, false) => "THAWED",
            (Self::V2, true) => "1",
            (Self::V2, false) => "0",
        }
    }
}

/// Reads whether the cgroup in `dir` is completely frozen. A v1 cgroup that
/// is still FREEZING counts as not frozen.
fn read_frozen_state(dir: &Path, kind: FreezerKind) -> Result<bool, CgroupError> {
    let file = match kind {
        FreezerKind::V1 => dir.join("freezer.state"),
        FreezerKind::V2 => dir.join("cgroup.events"),
    };
    let text = std::fs::read_to_string(&file).map_err(|source| CgroupError {
        action: "read",
        path: file.clone(),
        source,
    })?;
    Ok(match kind {
        FreezerKind::V1 => text.trim() == "FROZEN",
        FreezerKind::V2 => text
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"]),
    })
}

/// The v1 freezer tries to freeze each task once per write of FROZEN; a task
/// that could not be frozen at that moment (in the middle of a fork or a
/// syscall that does not freeze) leaves the cgroup FREEZING until FROZEN is
/// written again. So FROZEN is rewritten until it sticks, with an occasional
/// thaw in between to get tasks out of states that block freezing (what runc
/// does too).
fn freeze_v1(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    let deadline = Instant::now() + timeout;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if attempt.is_multiple_of(50) {
            write(&state, "THAWED")?;
            std::thread::sleep(Duration::from_millis(10));
        }
        write(&state, "FROZEN")?;
        // Give the kernel a moment, then look.
        for _ in 0..5 {
            if read_frozen_state(dir, FreezerKind::V1)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if Instant::now() >= deadline {
            return Err(CgroupError {
                action: "freeze (the cgroup stayed FREEZING)",
                path: state,
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
    }
}

fn wait_frozen_state(
    dir: &Path,
    kind: FreezerKind,
    frozen: bool,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        if read_frozen_state(dir, kind)? == frozen {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let file = dir.join(match kind {
                FreezerKind::V1 => "freezer.state",
                FreezerKind::V2 => "cgroup.events",
            });
            return Err(CgroupError {
                action: if frozen {
                    "freeze (the cgroup did not report frozen in time)"
                } else {
                    "thaw (the cgroup did not report thawed in time)"
                },
                path: file,
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
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
    fn v1_freezer_is_frozen_only_once_freezing_is_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("freezer.state"), "FREEZING\n").unwrap();
        assert!(!read_frozen_state(dir.path(), FreezerKind::V1).unwrap());
        let err = wait_frozen_state(dir.path(), FreezerKind::V1, true, Duration::from_millis(20))
            .unwrap_err();
        assert!(err.to_string().contains("did not report frozen"), "{err}");
        std::fs::write(dir.path().join("freezer.state"), "FROZEN\n").unwrap();
        assert!(read_frozen_state(dir.path(), FreezerKind::V1).unwrap());
        wait_frozen_state(dir.path(), FreezerKind::V1, true, Duration::from_millis(20)).unwrap();
    }

    #[test]
    fn v2_freezer_reads_cgroup_events() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(!read_frozen_state(dir.path(), FreezerKind::V2).unwrap());
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert!(read_frozen_state(dir.path(), FreezerKind::V2).unwrap());
        wait_frozen_state(dir.path(), FreezerKind::V2, true, Duration::from_millis(20)).unwrap();
    }

    #[test]
    fn freezer_dir_is_the_v1_freezer_controller_or_the_v2_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = CgroupLayout::detect_at(dir.path());
        assert_eq!(v1.freezer_dir("warren", "x"), None);
        assert!(v1
            .freeze("warren", "x", Duration::from_millis(10))
            .unwrap_err()
            .to_string()
            .contains("no freezer"));
        std::fs::create_dir(dir.path().join("freezer")).unwrap();
        assert_eq!(
            v1.freezer_dir("warren", "x"),
            Some(dir.path().join("freezer/warren/x"))
        );
        // Thawing a cgroup that is gone succeeds.
        v1.thaw("warren", "x", Duration::from_millis(10)).unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        let v2 = CgroupLayout::detect_at(dir.path());
        assert_eq!(
            v2.freezer_dir("warren", "x"),
            Some(dir.path().join("warren/x"))
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
