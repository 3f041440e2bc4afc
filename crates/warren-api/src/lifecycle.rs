//! Lifecycle types: snapshots, forks, suspend, lifetimes, events, templates
//! and warm pools.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Resources, Sandbox};

/// Largest `count` of one fork request.
pub const MAX_FORK_COUNT: i64 = 100;

/// What happens when a sandbox's timeout or idle timeout expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// The sandbox is deleted (the default).
    #[default]
    Delete,
    /// The sandbox is frozen in memory.
    Pause,
    /// The sandbox is suspended to disk (with its memory when the driver can).
    Suspend,
}

impl OnTimeout {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Pause => "pause",
            Self::Suspend => "suspend",
        }
    }
}

/// `PATCH /v1/sandboxes/{id}`: changes a sandbox's lifetime settings. Absent
/// fields stay as they are; `0` clears a timeout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSandboxRequest {
    /// Seconds from now until the sandbox times out (extends or shortens it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
    /// Seconds without exec, file or port activity until it times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<i64>,
    /// What a timeout does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// Resume a paused or suspended sandbox on its next exec, file or port request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
}

/// `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// A human name for the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why a snapshot exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Taken on request; deleted on request.
    #[default]
    User,
    /// Taken by a fork; deleted with the last sandbox that uses it.
    Fork,
    /// The result of a template's setup; deleted with the template.
    Template,
}

/// A read-only capture of a sandbox's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `snap_` followed by 20 lowercase letters and digits.
    pub id: String,
    /// The human name given at capture, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Why it exists.
    pub kind: SnapshotKind,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// The image under the captured files.
    pub image: String,
    /// The driver of the sandbox it was taken from.
    pub driver: String,
    /// Bytes of file data in this snapshot's own layer.
    pub size_bytes: u64,
    /// Number of read-only layers a sandbox created from it stacks (its own
    /// and those of the snapshots it builds on), not counting the image's.
    pub layer_count: u32,
    /// Live sandboxes created from it (or from a snapshot built on it).
    #[serde(default)]
    pub used_by: Vec<String>,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotList {
    /// Snapshots, newest first.
    pub snapshots: Vec<Snapshot>,
}

/// `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies, 1..=100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Copy the running processes' memory too (drivers that checkpoint:
    /// `gvisor`); otherwise only the files are copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
    /// Labels for the new sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The answer to a fork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkResult {
    /// The snapshot the copies were made from.
    pub snapshot: String,
    /// The new sandboxes, all running.
    pub sandboxes: Vec<Sandbox>,
}

/// One entry of a sandbox's event log (`GET /v1/sandboxes/{id}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEvent {
    /// Increasing id; also the SSE event id, usable as `Last-Event-ID`.
    pub id: i64,
    /// The sandbox.
    pub sandbox_id: String,
    /// What happened: a state name (`running`, `paused`, …) or
    /// `timeout`, `oom_killed`, `extended`, `snapshot`, `fork`.
    pub kind: String,
    /// Details.
    #[serde(default)]
    pub data: serde_json::Value,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// `GET /v1/sandboxes/{id}/events` without streaming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEventList {
    /// Events, oldest first.
    pub events: Vec<SandboxEvent>,
}

/// `POST /v1/templates`: a recipe for a ready-to-fork environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// Unique name (DNS label: lowercase letters, digits, `-`, at most 63).
    pub name: String,
    /// Base image (default `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Shell commands run once, in order, as root, in a builder sandbox.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Environment for the setup and for every sandbox from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Limits for the builder and for sandboxes from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Default working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Egress policy of the builder sandbox that runs the setup (absent: the
    /// daemon's default mode). Sandboxes created from the template do not
    /// inherit it: they get the daemon's default, or the policy their
    /// create request names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::NetworkPolicy>,
}

/// Where a template is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemplateState {
    /// Its setup is running.
    Building,
    /// Its snapshot exists; sandboxes can be created from it.
    Ready,
    /// Its setup failed; `failureReason` says which command and why.
    Failed,
}

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// Its name.
    pub name: String,
    /// The recipe it was built from.
    pub recipe: CreateTemplateRequest,
    /// sha256 of the canonical recipe: a changed recipe is a different template.
    pub recipe_hash: String,
    /// Where it is.
    pub state: TemplateState,
    /// The snapshot sandboxes fork from, once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why the build failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateList {
    /// Templates by name.
    pub templates: Vec<Template>,
}

/// The answer to `DELETE /v1/templates/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRemoved {
    /// The deleted template.
    pub name: String,
    /// Its snapshot, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Whether the snapshot was deleted too.
    pub snapshot_deleted: bool,
    /// Why the snapshot was kept (sandboxes still use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_kept_because: Option<String>,
}

/// One line of the NDJSON stream answering `POST /v1/templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TemplateBuildEvent {
    /// The recipe matches a template that is ready: nothing was built.
    Reused {
        /// The template.
        template: Template,
    },
    /// Setup command `index` (0-based) starts.
    Step {
        /// Its index in `setup`.
        index: usize,
        /// The command.
        command: String,
    },
    /// Output of the running setup command.
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The text (lossy UTF-8).
        data: String,
    },
    /// The build finished; the template is ready.
    Done {
        /// The template.
        template: Template,
    },
    /// The build failed; the builder sandbox was deleted.
    Failed {
        /// The failing command, when a command failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        /// Its exit code.
        #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// What went wrong, with the command's output tail.
        message: String,
    },
}

/// `POST /v1/pools`: keep sandboxes of a template created and ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePoolRequest {
    /// The template (must exist; one pool per template).
    pub template: String,
    /// How many ready sandboxes to keep, 1..=100.
    pub size: i64,
}

/// A warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The template its sandboxes are created from.
    pub template: String,
    /// How many ready sandboxes it keeps.
    pub size: u64,
    /// How many are ready now.
    pub ready: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolList {
    /// Pools by template name.
    pub pools: Vec<Pool>,
}
