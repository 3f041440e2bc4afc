//! The harness the privileged integration tests of the namespace driver
//! share: one driver on a private data dir and a private cgroup parent that
//! cleans up after itself, even when the test fails.
// Every test binary compiles this module; not every one uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;
use warren_runtime::{
    Driver, ExecSpec, NamespaceConfig, NamespaceDriver, RuntimeInfo, SandboxSpec,
};

/// Whether the test runs as root (namespaces, overlay, cgroups, mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the test, with a printed reason, unless it runs as root.
/// (Unused in the binaries that check root their own way.)
#[allow(unused_macros)]
macro_rules! require_root {
    () => {
        if !$crate::support::is_root() {
            eprintln!("skipped: needs root for namespaces, overlay and cgroups");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// One driver on a private data dir and a private cgroup parent; destroys
/// its live sandboxes and removes everything else on drop, even when the
/// test fails.
pub struct Harness {
    pub driver: NamespaceDriver,
    pub data: TempDir,
    pub parent: String,
    live: Mutex<Vec<(String, RuntimeInfo)>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Harness {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// [`Harness::new`] with changes to the driver's configuration.
    pub fn with_config(change: impl FnOnce(&mut NamespaceConfig)) -> Self {
        warren_linux::cgroup::remove_orphaned_parents("warren-test");
        let data = tempfile::tempdir().unwrap();
        let parent = format!(
            "warren-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut cfg = NamespaceConfig::new(data.path());
        cfg.cgroup_parent = parent.clone();
        change(&mut cfg);
        let driver = NamespaceDriver::new(cfg).unwrap();
        Self {
            driver,
            data,
            parent,
            live: Mutex::default(),
        }
    }

    /// The common defaults: the host image, 1 cpu, 256 MiB, 128 pids,
    /// `/workspace`, no env, no disk, no user. Tests that need other values
    /// change the fields of the returned spec.
    pub fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            image: "host".into(),
            cpus: 1.0,
            memory_bytes: 256 << 20,
            pids_limit: 128,
            workdir: "/workspace".into(),
            ..Default::default()
        }
    }

    /// Creates the sandbox and keeps it as live until [`Harness::destroy`].
    pub async fn create(&self, spec: &SandboxSpec) -> RuntimeInfo {
        let info = self.driver.create(spec).await.unwrap();
        self.live().push((spec.id.clone(), info.clone()));
        info
    }

    /// Runs `script` with `/bin/sh -c` as the sandbox's default user:
    /// (exit code, stdout, stderr).
    pub async fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        self.sh_as(id, None, script).await
    }

    /// [`Harness::sh`] as `user` (`None`: the sandbox's default user).
    pub async fn sh_as(&self, id: &str, user: Option<&str>, script: &str) -> (i32, String, String) {
        let out = self
            .driver
            .exec(
                id,
                ExecSpec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    user: user.map(String::from),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Destroys a sandbox made by [`Harness::create`].
    pub async fn destroy(&self, id: &str) {
        let info = {
            let mut live = self.live();
            let pos = live.iter().position(|(i, _)| i == id).unwrap();
            live.remove(pos).1
        };
        self.driver.destroy(id, Some(&info)).await.unwrap();
    }

    /// The live sandboxes, also after a test panicked holding the lock.
    fn live(&self) -> MutexGuard<'_, Vec<(String, RuntimeInfo)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let live: Vec<(String, RuntimeInfo)> = self.live().drain(..).collect();
        if !live.is_empty() {
            // Drop may run inside the test's runtime: destroy from a thread
            // of our own with its own runtime.
            let driver = &self.driver;
            std::thread::scope(|scope| {
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    for (id, info) in live {
                        let _ = rt.block_on(driver.destroy(&id, Some(&info)));
                    }
                });
            });
        }
        // Kill whatever is left in this harness's cgroups (including
        // sandboxes whose create failed half-way), then remove the cgroups.
        let layout = warren_linux::cgroup::CgroupLayout::detect();
        let parents: Vec<PathBuf> = layout
            .dirs(&self.parent, "x")
            .into_iter()
            .filter_map(|d| d.parent().map(PathBuf::from))
            .collect();
        for parent in &parents {
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let procs =
                    std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) and waitpid(2) on processes in this test's own
                    // cgroup; waitpid reaps the ones reparented to us (ECHILD otherwise).
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        for parent in &parents {
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        layout.remove_parent_if_empty(&self.parent);
        // The disk mounts go with `destroy`; unmount leftovers of a failed
        // test before the data dir is removed.
        let sandboxes = self.data.path().join("sandboxes");
        for entry in std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = warren_linux::disk::unmount(&entry.path().join("disk"));
        }
    }
}
