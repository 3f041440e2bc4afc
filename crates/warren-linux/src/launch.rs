//! What the daemon hands the bootstrap helper to start one sandbox.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A host directory or file shown at a path inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
}

/// Everything needed to start one sandbox, serialized to the bootstrap
/// helper's stdin as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchConfig {
    /// Sandbox id, also its hostname.
    pub id: String,
    /// Overlay lower layers, topmost first (the image's root skeleton).
    pub lower_dirs: Vec<PathBuf>,
    /// Overlay upper directory: everything the sandbox writes.
    pub upper_dir: PathBuf,
    /// Overlay work directory (same filesystem as `upper_dir`).
    pub work_dir: PathBuf,
    /// Where the merged root is mounted inside the sandbox's mount namespace.
    pub rootfs: PathBuf,
    /// Host paths shown read-only (for the `host` image: /usr, /etc, …).
    pub read_only_binds: Vec<BindMount>,
    /// Paths inside the sandbox hidden behind an empty file (secrets in /etc).
    pub hidden_files: Vec<PathBuf>,
    /// Sandbox-private host files bound read-write over image paths (the
    /// sandbox's own /etc/passwd and /etc/group, so users can be added).
    #[serde(default)]
    pub private_files: Vec<BindMount>,
    /// Host file bound read-only over the sandbox's `/etc/resolv.conf`
    /// (Warren's resolver). Skipped when `/etc` is not a real directory of
    /// the image; a symlink at `/etc/resolv.conf` is replaced by a file in
    /// the sandbox's writable layer (never followed), or the bind skipped.
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    /// Host path of the static agent binary, bind-mounted read-only.
    pub agent_binary: PathBuf,
    /// Host path of the agent's unix socket.
    pub agent_socket: PathBuf,
    /// `cgroup.procs` files the helper joins before cloning.
    pub cgroup_procs: Vec<PathBuf>,
    /// First host uid/gid of the sandbox's id range (sandbox root maps here).
    pub id_map_base: u32,
    /// Number of ids mapped.
    pub id_map_count: u32,
    /// Default working directory of commands.
    pub workdir: String,
    /// Environment of every command.
    pub env: Vec<(String, String)>,
    /// Default user of commands (`None`: root).
    #[serde(default)]
    pub user: Option<String>,
}

/// Where the agent binary is mounted inside every sandbox.
pub const AGENT_PATH_IN_SANDBOX: &str = "/.warren/agent";

/// What the agent's PID 1 mode receives as its single JSON argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInitConfig {
    /// The inherited listening socket (`-1` when `listen_path` is set).
    pub listen_fd: i32,
    /// Path (inside the sandbox) of a unix socket the agent binds itself
    /// instead of using `listen_fd` (the gVisor driver: runsc's
    /// `--host-uds=create` makes it appear in a bind-mounted host
    /// directory). In this mode SIGUSR1 closes every socket for a checkpoint
    /// and SIGUSR2 binds the listener again (see warren-agent's
    /// `path_listener`).
    #[serde(default)]
    pub listen_path: Option<String>,
    /// Default working directory.
    pub workdir: String,
    /// Environment for every command.
    pub env: Vec<(String, String)>,
    /// Default user of commands (`None`: root).
    #[serde(default)]
    pub user: Option<String>,
}
