use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The image used when a create request names none.
pub const DEFAULT_IMAGE: &str = "host";
/// Default CPU quota, in cores.
pub const DEFAULT_CPUS: f64 = 2.0;
/// Default memory limit in MiB.
pub const DEFAULT_MEMORY_MB: u64 = 2048;
/// Default limit on the number of processes and threads.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// Default working directory inside a sandbox.
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// `POST /v1/sandboxes`: what to create. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Image name; `host` (the default) is a read-only view of the host's system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A human name for the sandbox (not unique, not an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Resource limits; missing values take the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables for every command run in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Default working directory for commands (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Free-form labels, usable as list filters (`metadata.k=v`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// User that commands run as by default: `root` (the default) or the name
    /// of an unprivileged user, created in the sandbox if the image lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Isolation driver: `namespace` (the default) or `gvisor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Start from this snapshot's files (`snap_…`); the image is the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Start from this template's snapshot (by template name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// With `template`: claim a ready sandbox from the template's warm pool,
    /// falling back to a normal create when the pool is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pool: Option<bool>,
    /// Seconds after creation (or the last extension) until the sandbox times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
    /// Seconds without exec, file or port activity until it times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<i64>,
    /// What a timeout does (default `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<crate::OnTimeout>,
    /// Resume a paused or suspended sandbox on its next exec, file or port request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    /// Egress policy (default: the daemon's default mode, `internet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::NetworkPolicy>,
    /// Names of secrets (`POST /v1/secrets`) put into the sandbox's
    /// environment under their own names. Values never appear in the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Requested resource limits. Signed so that negative values reach
/// validation and get a 422 naming the field rather than a parse error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU quota in cores (fractions allowed, for example 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Disk space for the sandbox's own files, in MiB. Writes beyond it fail
    /// with ENOSPC inside the sandbox. Unset: no per-sandbox bound (files
    /// share the data directory's filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<i64>,
}

/// The limits a sandbox actually runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedResources {
    /// CPU quota in cores.
    pub cpus: f64,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Maximum number of processes and threads.
    pub pids_limit: u64,
    /// Disk space for the sandbox's own files in MiB, when bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

impl Default for ResolvedResources {
    fn default() -> Self {
        Self {
            cpus: DEFAULT_CPUS,
            memory_mb: DEFAULT_MEMORY_MB,
            pids_limit: DEFAULT_PIDS_LIMIT,
            disk_mb: None,
        }
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being set up.
    Creating,
    /// Running; commands can be executed.
    Running,
    /// Frozen in memory.
    Paused,
    /// Saved to disk, not running.
    Suspended,
    /// Stopped; files kept.
    Stopped,
    /// Broke; `failureReason` says why. Files kept until deleted.
    Failed,
    /// Deleted; nothing left.
    Deleted,
}

impl SandboxState {
    /// The lowercase name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Suspended => "suspended",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    /// Whether a sandbox in this state may move to `next` (DESIGN.md:
    /// `creating → running ⇄ paused`, `running|paused → suspended → running`,
    /// any live state → `stopped` or `failed`, anything but `deleted` → `deleted`).
    pub fn can_become(self, next: Self) -> bool {
        use SandboxState::*;
        match (self, next) {
            (Deleted, _) => false,
            (_, Deleted) => true,
            (Creating, Running | Failed) => true,
            (Running, Paused | Suspended | Stopped | Failed) => true,
            (Paused, Running | Suspended | Stopped | Failed) => true,
            (Suspended, Running | Stopped | Failed) => true,
            (Stopped, Running | Failed) => true,
            _ => false,
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "suspended" => Self::Suspended,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// DNS-label safe id: 20 lowercase letters and digits.
    pub id: String,
    /// The human name given at create, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Current state.
    pub state: SandboxState,
    /// Image the sandbox was created from.
    pub image: String,
    /// Isolation driver (`namespace`).
    pub driver: String,
    /// Limits in force.
    pub resources: ResolvedResources,
    /// Environment for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default working directory.
    pub workdir: String,
    /// Labels given at create.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Default user of commands (`root` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When the sandbox was created.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
    /// Why the sandbox is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The snapshot it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The template it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Timeout in seconds from creation or the last extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Idle timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// What a timeout does.
    #[serde(default)]
    pub on_timeout: crate::OnTimeout,
    /// Whether the next request resumes a paused or suspended sandbox.
    #[serde(default)]
    pub auto_resume: bool,
    /// When the timeout (not the idle timeout) expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The last exec, file or port activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When suspended: whether its processes' memory was kept (`gvisor`)
    /// or only its files (`namespace`: resume starts it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_preserved: Option<bool>,
    /// Its egress policy and address.
    #[serde(default)]
    pub network: crate::NetworkInfo,
    /// Names of the secrets in its environment (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxList {
    /// Sandboxes, newest first.
    pub sandboxes: Vec<Sandbox>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// Daemon version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::SandboxState::{self, *};

    const ALL: [SandboxState; 7] = [
        Creating, Running, Paused, Suspended, Stopped, Failed, Deleted,
    ];

    #[test]
    fn lifecycle_transitions_follow_the_design() {
        for (from, to) in [
            (Creating, Running),
            (Creating, Failed),
            (Running, Paused),
            (Paused, Running),
            (Running, Suspended),
            (Suspended, Running),
            (Running, Stopped),
            (Stopped, Running),
            (Running, Failed),
            (Failed, Deleted),
            (Creating, Deleted),
        ] {
            assert!(from.can_become(to), "{from:?} -> {to:?} must be allowed");
        }
        for (from, to) in [
            (Creating, Paused),
            (Failed, Running),
            (Stopped, Paused),
            (Running, Creating),
            (Running, Running),
        ] {
            assert!(!from.can_become(to), "{from:?} -> {to:?} must be refused");
        }
        for state in ALL {
            assert!(!Deleted.can_become(state), "deleted is final");
            assert_eq!(SandboxState::parse(state.as_str()), Some(state));
        }
    }
}
