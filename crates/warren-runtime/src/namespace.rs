//! The namespace driver: native Linux namespaces, an overlay root, cgroups.
//! The clone itself happens in `warren-agent bootstrap`, a single-threaded
//! helper process, never in the daemon's tokio threads.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use warren_linux::cgroup::{CgroupLayout, CgroupLimits};
use warren_linux::host_image::{self, HostImage};
use warren_linux::{BindMount, LaunchConfig};
use warren_proto::Frame;

use crate::agent_conn::AgentConn;
use crate::driver::{
    Driver, DriverError, ExecOutcome, ExecSpec, Pausable, RuntimeInfo, SandboxSpec,
};
use crate::process::{ProcessControl, ProcessEvent, ProcessInfo, SpawnSpec};
use crate::process_state;

/// The agent binary built by build.rs (static-pie).
pub static AGENT_BINARY: &[u8] = include_bytes!(env!("WARREN_AGENT_PATH"));

/// Settings of the namespace driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Warren's data directory (sandboxes, images, the agent binary).
    pub data_dir: PathBuf,
    /// Name of the parent cgroup under each hierarchy (default `warren`).
    pub cgroup_parent: String,
    /// First host uid/gid that sandbox ids map to (sandbox root = this uid).
    pub id_map_base: u32,
    /// Size of the mapped id range.
    pub id_map_count: u32,
    /// Remount cgroup2 with `favordynmods` at start, which makes joining a
    /// cgroup ~30× cheaper (see `cgroup::favor_dynamic_modifications`).
    pub favor_cgroup_dynmods: bool,
    /// Bound read-only over every new sandbox's `/etc/resolv.conf` when the
    /// file exists at create (Warren's resolver; written by
    /// [`HostNetwork::start`](crate::network::HostNetwork::start)). Default:
    /// `<data_dir>/network/resolv.conf`, where the daemon's networking
    /// writes it.
    pub resolv_conf: Option<PathBuf>,
}

impl NamespaceConfig {
    /// The defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir: PathBuf = data_dir.into();
        Self {
            resolv_conf: Some(crate::network::resolv_conf_path(&data_dir.join("network"))),
            data_dir,
            cgroup_parent: "warren".into(),
            id_map_base: 1_000_000,
            id_map_count: 65536,
            favor_cgroup_dynmods: true,
        }
    }
}

/// Native Linux isolation: user, mount, pid, net, ipc, uts and cgroup
/// namespaces over an overlay root.
pub struct NamespaceDriver {
    pub(crate) cfg: NamespaceConfig,
    agent_path: PathBuf,
    pub(crate) host_image: HostImage,
    /// Bottom layer under every OCI image: the mount points Warren needs.
    oci_base: PathBuf,
    cgroups: CgroupLayout,
    pub(crate) agents: Mutex<HashMap<String, Arc<AgentConn>>>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

fn create_err(step: &str, message: impl std::fmt::Display) -> DriverError {
    DriverError::Create {
        step: step.into(),
        message: message.to_string(),
    }
}

impl NamespaceDriver {
    /// Prepares the data directory: installs the agent binary and builds the
    /// `host` image skeleton. Also makes this process a child subreaper, so
    /// sandbox inits it started are reparented to it and reaped on destroy.
    pub fn new(cfg: NamespaceConfig) -> Result<Self, DriverError> {
        let data = &cfg.data_dir;
        for dir in ["bin", "images/host", "sandboxes"] {
            std::fs::create_dir_all(data.join(dir))
                .map_err(io_err(format!("create {}", data.join(dir).display())))?;
        }
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err(format!("chmod {}", data.display())))?;
        // Image layers and sandboxes' upper directories hold files owned by
        // the sandboxes' uids, setuid ones included. Only root and the
        // sandboxes' own group (their root's host gid, which overlay needs
        // to reach its layers) may enter; other host users may not run them.
        // Snapshot layers are copies of upper directories: the same rules.
        std::fs::create_dir_all(data.join("snapshots")).map_err(io_err(format!(
            "create {}",
            data.join("snapshots").display()
        )))?;
        for dir in ["images", "sandboxes", "snapshots"] {
            let path = data.join(dir);
            std::os::unix::fs::chown(&path, Some(0), Some(cfg.id_map_base))
                .map_err(io_err(format!("chown {}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o710))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        let agent_path = install_agent(&data.join("bin"))?;
        let data_abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.clone());
        let host_image = host_image::prepare(
            &data.join("images/host"),
            Path::new("/"),
            cfg.id_map_base,
            cfg.id_map_base,
            &[data_abs],
        )
        .map_err(io_err("prepare the host image"))?;
        let oci_base = host_image::prepare_oci_base(
            &data.join("images/oci-base"),
            cfg.id_map_base,
            cfg.id_map_base,
        )
        .map_err(io_err("prepare the base layer of OCI images"))?;
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if cfg.favor_cgroup_dynmods {
            match warren_linux::cgroup::favor_dynamic_modifications() {
                Ok(changed) if !changed.is_empty() => {
                    tracing::info!(mounts = ?changed, "remounted cgroup2 with favordynmods (fast cgroup joins)");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not enable favordynmods; sandbox creation will be slower"
                ),
            }
        }
        Ok(Self {
            cgroups: CgroupLayout::detect(),
            cfg,
            agent_path,
            host_image,
            oci_base,
            agents: Mutex::default(),
        })
    }

    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    pub(crate) fn socket_path(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    /// The cgroup layout in use (v1 or v2).
    pub fn cgroup_layout(&self) -> &CgroupLayout {
        &self.cgroups
    }

    /// The sandbox's cgroup directories.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.cgroups.dirs(&self.cfg.cgroup_parent, id)
    }

    fn conn(&self, id: &str) -> Option<Arc<AgentConn>> {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Sets the sandbox up from its directory and starts its init. Files a
    /// suspended sandbox left there (writable layer, disk image) are reused.
    pub(crate) async fn launch(&self, spec: &SandboxSpec) -> Result<i32, DriverError> {
        let dir = self.sandbox_dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        // With a disk bound, the writable layers live on the sandbox's own
        // filesystem of that size; without, on the data directory's.
        let layers = match spec.disk_mb {
            Some(mb) => {
                let image = dir.join("disk.img");
                let mount = dir.join("disk");
                std::fs::create_dir_all(&mount)
                    .map_err(io_err(format!("create {}", mount.display())))?;
                // A suspended sandbox's disk already holds its files.
                if !image.exists() {
                    warren_linux::disk::create_image(&image, mb)
                        .map_err(|e| create_err("create disk image", e))?;
                }
                warren_linux::disk::mount_image(&image, &mount)
                    .map_err(|e| create_err("mount disk image", e))?;
                mount
            }
            None => dir.clone(),
        };
        let (upper, work, rootfs) = (
            layers.join("upper"),
            layers.join("work"),
            dir.join("rootfs"),
        );
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        for d in [&upper, &work] {
            std::os::unix::fs::chown(d, Some(self.cfg.id_map_base), Some(self.cfg.id_map_base))
                .map_err(io_err(format!("chown {}", d.display())))?;
        }
        // The host image shows the host's system directories read-only over
        // a skeleton; an OCI image is its own layers under a tiny top layer
        // that guarantees the mount points Warren needs.
        let (lower_dirs, read_only_binds, hidden_files, private_files) = if spec.layers.is_empty() {
            let mut lowers = spec.snapshot_layers.clone();
            lowers.push(self.host_image.rootfs.clone());
            (
                lowers,
                self.host_image.binds.clone(),
                self.host_image.hidden.clone(),
                self.private_account_files(&dir)?,
            )
        } else {
            // Warren's mount points sit ABOVE the image: setup runs before
            // pivot_root, when an image's symlink (`proc -> /somewhere`,
            // `.warren -> /var/lib/...`) would resolve on the host.
            let mut lowers = vec![self.oci_base.clone()];
            lowers.extend(spec.snapshot_layers.iter().cloned());
            lowers.extend(spec.layers.iter().cloned());
            (lowers, Vec::new(), Vec::new(), Vec::new())
        };
        write_lowers_record(&dir, &lower_dirs)?;
        let limits = CgroupLimits {
            cpus: spec.cpus,
            memory_bytes: spec.memory_bytes,
            pids: spec.pids_limit,
        };
        let cgroup_procs = self
            .cgroups
            .create(&self.cfg.cgroup_parent, &spec.id, limits)
            .map_err(|e| create_err("cgroup", e))?;
        let launch = LaunchConfig {
            id: spec.id.clone(),
            lower_dirs,
            upper_dir: upper,
            work_dir: work,
            rootfs,
            read_only_binds,
            hidden_files,
            private_files,
            resolv_conf: self.resolv_conf_for(spec),
            agent_binary: self.agent_path.clone(),
            agent_socket: self.socket_path(&spec.id),
            cgroup_procs,
            id_map_base: self.cfg.id_map_base,
            id_map_count: self.cfg.id_map_count,
            workdir: spec.workdir.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
        };
        let input =
            serde_json::to_vec(&launch).map_err(|e| create_err("encode launch config", e))?;
        let mut child = spawn_bootstrap(&self.agent_path).await?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| create_err("send launch config", e))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| create_err("bootstrap", "the helper did not finish within 30 s"))?
            .map_err(|e| create_err("bootstrap", e))?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
            create_err(
                "bootstrap",
                format!(
                    "helper said: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
        })?;
        if let Some(err) = report.get("error").and_then(|e| e.as_str()) {
            return Err(create_err("sandbox setup", err));
        }
        report
            .get("pid")
            .and_then(serde_json::Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| create_err("bootstrap", "helper reported no pid"))
    }

    /// The resolv.conf to bind over the sandbox's, if configured and present.
    fn resolv_conf_for(&self, spec: &SandboxSpec) -> Option<PathBuf> {
        let path = self.cfg.resolv_conf.clone().filter(|p| p.is_file())?;
        // The host image shows the host's /etc read-only: a symlinked
        // resolv.conf there cannot be replaced, so the bind is skipped
        // (DNS on port 53 still reaches Warren's resolver through NAT).
        if spec.layers.is_empty() && Path::new("/etc/resolv.conf").is_symlink() {
            tracing::debug!(
                sandbox = %spec.id,
                "the host's /etc/resolv.conf is a symlink; not replacing it in the sandbox"
            );
            return None;
        }
        Some(path)
    }

    /// The sandbox's own copies of the image's /etc/passwd and /etc/group,
    /// owned by its root, so the agent can add users (`user: "agent"`)
    /// without touching the host's files.
    fn private_account_files(&self, dir: &Path) -> Result<Vec<BindMount>, DriverError> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(io_err(format!("create {}", etc.display())))?;
        let mut binds = Vec::new();
        for name in ["passwd", "group"] {
            let host = Path::new("/etc").join(name);
            let copy = etc.join(name);
            // A resumed sandbox keeps the accounts it added.
            if copy.exists() {
                binds.push(BindMount {
                    source: copy,
                    target: host,
                });
                continue;
            }
            match std::fs::copy(&host, &copy) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("copy {}", host.display()))(e)),
            }
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err(format!("chmod {}", copy.display())))?;
            std::os::unix::fs::chown(
                &copy,
                Some(self.cfg.id_map_base),
                Some(self.cfg.id_map_base),
            )
            .map_err(io_err(format!("chown {}", copy.display())))?;
            binds.push(BindMount {
                source: copy,
                target: host,
            });
        }
        Ok(binds)
    }

    /// The kernel's count of OOM kills in the sandbox's memory cgroup.
    fn oom_kills(&self, id: &str) -> u64 {
        let Some(dir) = self.cgroups.memory_dir(&self.cfg.cgroup_parent, id) else {
            return 0;
        };
        // v1: memory.oom_control; v2: memory.events. Both have "oom_kill N".
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .find_map(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// The sandbox's agent connection; one reconnect when it dropped (the
    /// agent restarted its accept, or a daemon restart raced).
    pub(crate) async fn live_conn(&self, id: &str) -> Result<Arc<AgentConn>, DriverError> {
        if let Some(conn) = self.conn(id).filter(|c| c.is_alive()) {
            return Ok(conn);
        }
        let conn = AgentConn::connect(&self.socket_path(id)).await?;
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), Arc::clone(&conn));
        Ok(conn)
    }

    /// What the store keeps about the sandbox whose init is `pid`.
    pub(crate) fn runtime_info(&self, id: &str, pid: i32) -> RuntimeInfo {
        RuntimeInfo {
            pid,
            start_time: process_state::stat(pid)
                .map(|(_, start)| start)
                .unwrap_or_default(),
            agent_socket: self.socket_path(id),
        }
    }

    /// Connects to the agent of a sandbox just started (or re-adopted) and
    /// keeps the connection for its requests.
    pub(crate) async fn attach_agent(
        &self,
        id: &str,
        info: &RuntimeInfo,
    ) -> Result<(), DriverError> {
        let conn = AgentConn::connect(&info.agent_socket).await?;
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), conn);
        Ok(())
    }

    fn cleanup(&self, id: &str) -> Result<(), DriverError> {
        remove_sandbox_files(
            &self.cgroups,
            &self.cfg.cgroup_parent,
            &self.sandbox_dir(id),
            id,
        )
    }
}

/// Removes what a sandbox leaves on the host once its processes are gone:
/// its cgroups, its disk mount (if it has one) and its directory.
/// Name of the file in a sandbox's directory that lists its overlay lower
/// directories (top first), for change listing after a daemon restart.
pub(crate) const LOWERS_RECORD: &str = "lowers.json";

fn write_lowers_record(dir: &Path, lowers: &[PathBuf]) -> Result<(), DriverError> {
    let path = dir.join(LOWERS_RECORD);
    let json = serde_json::to_vec(&serde_json::json!({ "lowers": lowers }))
        .map_err(|e| create_err("record lower layers", e))?;
    std::fs::write(&path, json).map_err(io_err(format!("write {}", path.display())))
}

fn remove_sandbox_files(
    cgroups: &CgroupLayout,
    parent: &str,
    dir: &Path,
    id: &str,
) -> Result<(), DriverError> {
    cgroups.remove(parent, id).map_err(|e| DriverError::Io {
        context: format!("remove cgroups of {id}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    warren_linux::disk::unmount(&dir.join("disk")).map_err(io_err("unmount sandbox disk"))?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Starts the helper. ETXTBSY can occur for a moment after the binary was
/// written while another thread forks (the classic fork/exec write-fd race),
/// so that one error is retried.
async fn spawn_bootstrap(agent: &Path) -> Result<tokio::process::Child, DriverError> {
    let mut attempts = 0;
    loop {
        let spawned = tokio::process::Command::new(agent)
            .arg("bootstrap")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.map_err(|e| create_err("spawn bootstrap helper", e)),
        }
    }
}

/// Writes the embedded agent to `bin/warren-agent` when it differs.
pub(crate) fn install_agent(bin_dir: &Path) -> Result<PathBuf, DriverError> {
    let path = bin_dir.join("warren-agent");
    if std::fs::read(&path)
        .map(|b| b == AGENT_BINARY)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    let tmp = bin_dir.join(format!(".warren-agent.{}", std::process::id()));
    std::fs::write(&tmp, AGENT_BINARY).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod agent"))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!("install {}", path.display())))?;
    Ok(path)
}

#[async_trait]
impl Driver for NamespaceDriver {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn network_namespace_pid(&self, info: &RuntimeInfo) -> Option<i32> {
        // The agent is PID 1 of the sandbox and lives in its net namespace.
        Some(info.pid)
    }

    fn has_image(&self, image: &str) -> bool {
        image == "host"
    }

    fn capacity(&self) -> crate::HostCapacity {
        crate::HostCapacity::detect_for(&self.cfg.data_dir)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        if spec.layers.is_empty() && !self.has_image(&spec.image) {
            return Err(DriverError::UnknownImage(spec.image.clone()));
        }
        let pid = match self.launch(spec).await {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.cleanup(&spec.id);
                return Err(e);
            }
        };
        let info = self.runtime_info(&spec.id, pid);
        match self.attach_agent(&spec.id, &info).await {
            Ok(()) => Ok(info),
            Err(e) => {
                let _ = self.destroy(&spec.id, Some(&info)).await;
                Err(e)
            }
        }
    }

    async fn adopt(&self, id: &str, info: &RuntimeInfo) -> Result<(), DriverError> {
        if !process_state::is_same_live_process(info.pid, info.start_time) {
            return Err(DriverError::AgentUnavailable(format!(
                "sandbox init (pid {}) is gone",
                info.pid
            )));
        }
        self.attach_agent(id, info).await
    }

    fn processes(&self) -> Option<&dyn ProcessControl> {
        Some(self)
    }

    fn files(&self) -> Option<&dyn crate::FileControl> {
        Some(self)
    }

    fn changes(&self) -> Option<&dyn crate::ChangeTracking> {
        Some(self)
    }

    fn pausable(&self) -> Option<&dyn Pausable> {
        Some(self)
    }

    fn snapshots(&self) -> Option<&dyn crate::driver::Snapshottable> {
        Some(self)
    }

    fn suspending(&self) -> Option<&dyn crate::Suspending> {
        Some(self)
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        let conn = self.live_conn(id).await?;
        let oom_before = self.oom_kills(id);
        let mut outcome = crate::agent_host::exec(&conn, spec).await?;
        outcome.oom_killed = self.oom_kills(id) > oom_before;
        Ok(outcome)
    }

    async fn destroy(&self, id: &str, info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        // A frozen process does not die of SIGKILL until it is thawed (v1
        // freezer), so a paused sandbox is thawed first.
        self.thaw(id).await?;
        if let Some(info) = info.cloned() {
            tokio::task::spawn_blocking(move || {
                process_state::kill_and_wait(info.pid, info.start_time)
            })
            .await
            .map_err(|e| DriverError::Io {
                context: "wait for sandbox exit".into(),
                source: std::io::Error::other(e),
            })?;
        }
        let dir = self.sandbox_dir(id);
        let cgroups = self.cgroups.clone();
        let parent = self.cfg.cgroup_parent.clone();
        let id_owned = id.to_string();
        tokio::task::spawn_blocking(move || {
            remove_sandbox_files(&cgroups, &parent, &dir, &id_owned)
        })
        .await
        .map_err(|e| DriverError::Io {
            context: "remove sandbox".into(),
            source: std::io::Error::other(e),
        })?
    }
}

/// How long freezing or thawing may take before it is reported as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl NamespaceDriver {
    pub(crate) async fn thaw(&self, id: &str) -> Result<(), DriverError> {
        let cgroups = self.cgroups.clone();
        let parent = self.cfg.cgroup_parent.clone();
        let id_owned = id.to_string();
        tokio::task::spawn_blocking(move || cgroups.thaw(&parent, &id_owned, FREEZE_TIMEOUT))
            .await
            .map_err(|e| DriverError::Io {
                context: format!("thaw sandbox {id}"),
                source: std::io::Error::other(e),
            })?
            .map_err(|e| DriverError::Io {
                context: format!("thaw sandbox {id}"),
                source: std::io::Error::other(e.to_string()),
            })
    }
}

#[async_trait]
impl Pausable for NamespaceDriver {
    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        let cgroups = self.cgroups.clone();
        let parent = self.cfg.cgroup_parent.clone();
        let id_owned = id.to_string();
        let frozen =
            tokio::task::spawn_blocking(move || cgroups.freeze(&parent, &id_owned, FREEZE_TIMEOUT))
                .await
                .map_err(|e| DriverError::Io {
                    context: format!("freeze sandbox {id}"),
                    source: std::io::Error::other(e),
                })?;
        if let Err(e) = frozen {
            // Leave nothing half-frozen behind.
            let _ = self.thaw(id).await;
            return Err(DriverError::Io {
                context: format!("freeze sandbox {id}"),
                source: std::io::Error::other(e.to_string()),
            });
        }
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), DriverError> {
        self.thaw(id).await
    }
}

/// Maps an agent `error` answer for process `pid` onto a driver error.
fn process_error(pid: i32, code: Option<&str>, message: String) -> DriverError {
    match code {
        Some("not_found") => DriverError::ProcessNotFound(pid),
        Some("no_stdin") => DriverError::NoStdin(pid),
        Some("not_running") | Some("no_pty") => DriverError::ProcessNotRunning(message),
        Some("invalid") | Some("spawn") => DriverError::Invalid(message),
        _ => DriverError::Agent(message),
    }
}

fn unexpected(frame: &Frame) -> DriverError {
    DriverError::Agent(format!("unexpected answer {frame:?}"))
}

fn ack(pid: i32, answer: Frame) -> Result<(), DriverError> {
    match answer {
        Frame::Ack { .. } => Ok(()),
        Frame::Error { message, code, .. } => Err(process_error(pid, code.as_deref(), message)),
        other => Err(unexpected(&other)),
    }
}

fn info_of(e: warren_proto::ProcessEntry) -> ProcessInfo {
    ProcessInfo {
        pid: e.pid,
        tag: e.tag,
        argv: e.argv,
        running: e.running,
        exit_code: e.exit_code,
        timed_out: e.timed_out,
        stdin: e.stdin,
        started_ms: e.started_ms,
        ended_ms: e.ended_ms,
        output_bytes: e.output_bytes,
        pty: e.pty,
    }
}

fn event_of(frame: Frame) -> Option<ProcessEvent> {
    match frame {
        Frame::Output(c) => Some(ProcessEvent::Output {
            fd: c.fd,
            offset: c.offset,
            data: c.data,
        }),
        Frame::Dropped { count, .. } => Some(ProcessEvent::Dropped { count }),
        Frame::OutputEnd { offset, .. } => Some(ProcessEvent::End { offset }),
        Frame::Exited {
            exit_code,
            timed_out,
            ..
        } => Some(ProcessEvent::Exited {
            exit_code,
            timed_out,
        }),
        _ => None,
    }
}

#[async_trait]
impl<T: crate::agent_host::AgentHost> ProcessControl for T {
    async fn spawn(&self, id: &str, spec: SpawnSpec) -> Result<ProcessInfo, DriverError> {
        let conn = self.live_conn(id).await?;
        let argv = spec.argv.clone();
        let (tag, stdin, pty) = (spec.tag.clone(), spec.stdin, spec.pty.is_some());
        let answer = conn
            .request(|stream| {
                Frame::Spawn(warren_proto::SpawnRequest {
                    stream,
                    argv: spec.argv,
                    cwd: spec.cwd,
                    env: spec.env,
                    user: spec.user,
                    stdin: spec.stdin,
                    timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
                    tag: spec.tag,
                    buffer_bytes: spec.buffer_bytes,
                    pty: spec
                        .pty
                        .map(|(cols, rows)| warren_proto::PtySize { cols, rows }),
                })
            })
            .await?;
        match answer {
            Frame::Spawned { pid, .. } => {
                // The list has the exact start time; fall back to what we know.
                let listed = self.list_processes(id).await.unwrap_or_default();
                Ok(listed
                    .into_iter()
                    .find(|p| p.pid == pid)
                    .unwrap_or(ProcessInfo {
                        pid,
                        tag,
                        argv,
                        running: true,
                        stdin: stdin || pty,
                        pty,
                        ..Default::default()
                    }))
            }
            Frame::Error { message, code, .. } => Err(process_error(0, code.as_deref(), message)),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, DriverError> {
        let conn = self.live_conn(id).await?;
        match conn
            .request(|stream| Frame::ListProcesses { stream })
            .await?
        {
            Frame::ProcessList { entries, .. } => Ok(entries.into_iter().map(info_of).collect()),
            Frame::Error { message, .. } => Err(DriverError::Agent(message)),
            other => Err(unexpected(&other)),
        }
    }

    async fn subscribe_output(
        &self,
        id: &str,
        pid: i32,
        from: u64,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<ProcessEvent>, DriverError> {
        let conn = self.live_conn(id).await?;
        let mut frames = conn
            .subscribe(|stream| Frame::ProcessOutputRequest {
                stream,
                pid,
                from,
                no_follow: !follow,
            })
            .await?;
        match frames.recv().await {
            Some(Frame::Ack { .. }) => {}
            Some(Frame::Error { message, code, .. }) => {
                return Err(process_error(pid, code.as_deref(), message))
            }
            Some(other) => return Err(unexpected(&other)),
            None => {
                return Err(DriverError::AgentUnavailable(
                    "agent connection closed before answering".into(),
                ))
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if let Some(event) = event_of(frame) {
                    if tx.send(event).await.is_err() {
                        // The reader left; dropping `frames` cancels upstream.
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn write_stdin(
        &self,
        id: &str,
        pid: i32,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), DriverError> {
        let conn = self.live_conn(id).await?;
        let answer = conn
            .request(|stream| Frame::Stdin {
                stream,
                pid,
                data,
                close,
            })
            .await?;
        ack(pid, answer)
    }

    async fn signal(&self, id: &str, pid: i32, signal: i32) -> Result<(), DriverError> {
        let conn = self.live_conn(id).await?;
        let answer = conn
            .request(|stream| Frame::Signal {
                stream,
                pid,
                signal,
            })
            .await?;
        ack(pid, answer)
    }

    async fn resize(&self, id: &str, pid: i32, cols: u16, rows: u16) -> Result<(), DriverError> {
        let conn = self.live_conn(id).await?;
        let answer = conn
            .request(|stream| Frame::Resize {
                stream,
                pid,
                cols,
                rows,
            })
            .await?;
        ack(pid, answer)
    }
}
