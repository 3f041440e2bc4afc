use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use warren_api::{OnTimeout, ResolvedResources, Sandbox, SandboxState};

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// DNS-label safe id.
    pub id: String,
    /// Human name, if any.
    pub name: Option<String>,
    /// Current state.
    pub state: SandboxState,
    /// Image name.
    pub image: String,
    /// Driver name.
    pub driver: String,
    /// Limits in force.
    pub resources: ResolvedResources,
    /// Environment for every command.
    pub env: BTreeMap<String, String>,
    /// Default working directory.
    pub workdir: String,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Creation time (stored with microsecond precision).
    pub created_at: DateTime<Utc>,
    /// Last state change (stored with microsecond precision).
    pub updated_at: DateTime<Utc>,
    /// Why the sandbox failed.
    pub failure_reason: Option<String>,
    /// The driver's `RuntimeInfo` as JSON, while the sandbox has processes.
    pub runtime: Option<String>,
    /// Default user of commands (`None`: root).
    pub user: Option<String>,
    /// What an exec runs when it names no command (the image's Entrypoint
    /// and Cmd when the sandbox was created); `None`: a command is required.
    pub default_command: Option<Vec<String>>,
    /// Where it came from, its lifetime and its pool (the `lifecycle` column).
    pub lifecycle: Lifecycle,
}

/// A sandbox's lifecycle beyond its state, stored as one JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// The snapshot it was created from (`snap_…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The template it was created from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template whose warm pool holds it, until it is claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Timeout in seconds from creation or the last extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Idle timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// What a timeout does.
    pub on_timeout: OnTimeout,
    /// Resume on the next exec, file or port request.
    pub auto_resume: bool,
    /// When the timeout expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The last exec, file or port activity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When suspended: whether the driver kept the processes' memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_preserved: Option<bool>,
    /// The template this sandbox builds (a builder is deleted when its
    /// build ends, and at startup when a build was cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// Egress policy and address (`None`: a sandbox from before networking,
    /// which has loopback only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<warren_api::NetworkInfo>,
    /// Exposed ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<warren_api::ExposedPort>,
    /// Names of the secrets injected into its environment (never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl SandboxRecord {
    /// The API view of this record (the runtime info stays internal).
    pub fn to_api(&self) -> Sandbox {
        Sandbox {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            image: self.image.clone(),
            driver: self.driver.clone(),
            resources: self.resources.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            metadata: self.metadata.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            failure_reason: self.failure_reason.clone(),
            user: self.user.clone(),
            snapshot: self.lifecycle.snapshot.clone(),
            template: self.lifecycle.template.clone(),
            timeout_secs: self.lifecycle.timeout_secs,
            idle_timeout_secs: self.lifecycle.idle_timeout_secs,
            on_timeout: self.lifecycle.on_timeout,
            auto_resume: self.lifecycle.auto_resume,
            expires_at: self.lifecycle.expires_at,
            last_activity_at: self.lifecycle.last_activity_at,
            memory_preserved: self
                .lifecycle
                .memory_preserved
                .filter(|_| self.state == SandboxState::Suspended),
            network: self
                .lifecycle
                .network
                .clone()
                .unwrap_or(warren_api::NetworkInfo {
                    mode: warren_api::NetworkMode::None,
                    ..Default::default()
                }),
            secrets: self.lifecycle.secrets.clone(),
        }
    }
}

const SANDBOX_COLUMNS: &str = "id, name, state, image, driver, cpus, memory_mb, pids_limit, env, \
     workdir, metadata, created_at, updated_at, failure_reason, runtime, default_user, disk_mb, \
     default_command, lifecycle";

fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

fn corrupt(id: &str, field: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        field,
        message: message.to_string(),
    }
}

fn decode_map(
    id: &str,
    field: &'static str,
    text: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(id, field, e))
}

fn decode_sandbox(row: &SqliteRow) -> Result<SandboxRecord, StoreError> {
    let get = |column: &'static str| -> Result<String, StoreError> {
        row.try_get(column).map_err(query_error("decode sandbox"))
    };
    let get_opt = |column: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get(column).map_err(query_error("decode sandbox"))
    };
    let get_i64 = |column: &'static str| -> Result<i64, StoreError> {
        row.try_get(column).map_err(query_error("decode sandbox"))
    };
    let id = get("id")?;
    let state_text = get("state")?;
    let state =
        SandboxState::parse(&state_text).ok_or_else(|| corrupt(&id, "state", &state_text))?;
    let memory_mb = get_i64("memory_mb")?;
    let pids_limit = get_i64("pids_limit")?;
    Ok(SandboxRecord {
        name: get_opt("name")?,
        state,
        image: get("image")?,
        driver: get("driver")?,
        resources: ResolvedResources {
            cpus: row.try_get("cpus").map_err(query_error("decode sandbox"))?,
            memory_mb: u64::try_from(memory_mb).map_err(|e| corrupt(&id, "memory_mb", e))?,
            pids_limit: u64::try_from(pids_limit).map_err(|e| corrupt(&id, "pids_limit", e))?,
            disk_mb: row
                .try_get::<Option<i64>, _>("disk_mb")
                .map_err(query_error("decode sandbox"))?
                .map(|d| u64::try_from(d).map_err(|e| corrupt(&id, "disk_mb", e)))
                .transpose()?,
        },
        env: decode_map(&id, "env", &get("env")?)?,
        workdir: get("workdir")?,
        metadata: decode_map(&id, "metadata", &get("metadata")?)?,
        created_at: parse_timestamp(&id, "created_at", &get("created_at")?)?,
        updated_at: parse_timestamp(&id, "updated_at", &get("updated_at")?)?,
        failure_reason: get_opt("failure_reason")?,
        runtime: get_opt("runtime")?,
        user: get_opt("default_user")?,
        default_command: get_opt("default_command")?
            .map(|text| serde_json::from_str(&text).map_err(|e| corrupt(&id, "default_command", e)))
            .transpose()?,
        lifecycle: serde_json::from_str(&get("lifecycle")?)
            .map_err(|e| corrupt(&id, "lifecycle", e))?,
        id,
    })
}

impl Store {
    /// Inserts a new sandbox. Fails with [`StoreError::DuplicateSandbox`] if the id is taken.
    pub async fn insert_sandbox(&self, rec: &SandboxRecord) -> Result<(), StoreError> {
        let env = serde_json::to_string(&rec.env).map_err(|e| corrupt(&rec.id, "env", e))?;
        let metadata =
            serde_json::to_string(&rec.metadata).map_err(|e| corrupt(&rec.id, "metadata", e))?;
        let default_command = rec
            .default_command
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt(&rec.id, "default_command", e))?;
        let lifecycle =
            serde_json::to_string(&rec.lifecycle).map_err(|e| corrupt(&rec.id, "lifecycle", e))?;
        let sql = format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19)"
        );
        sqlx::query(&sql)
            .bind(&rec.id)
            .bind(&rec.name)
            .bind(rec.state.as_str())
            .bind(&rec.image)
            .bind(&rec.driver)
            .bind(rec.resources.cpus)
            .bind(to_i64("memory_mb", rec.resources.memory_mb)?)
            .bind(to_i64("pids_limit", rec.resources.pids_limit)?)
            .bind(env)
            .bind(&rec.workdir)
            .bind(metadata)
            .bind(timestamp_text(rec.created_at))
            .bind(timestamp_text(rec.updated_at))
            .bind(&rec.failure_reason)
            .bind(&rec.runtime)
            .bind(&rec.user)
            .bind(
                rec.resources
                    .disk_mb
                    .map(|d| to_i64("disk_mb", d))
                    .transpose()?,
            )
            .bind(default_command)
            .bind(lifecycle)
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if StoreError::is_unique_violation(&source) {
                    StoreError::DuplicateSandbox(rec.id.clone())
                } else {
                    StoreError::Query {
                        operation: "insert sandbox",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// The sandbox with this id, if any.
    pub async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get sandbox"))?;
        row.as_ref().map(decode_sandbox).transpose()
    }

    /// All sandboxes not in state `deleted`, newest first.
    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state <> $1 \
             ORDER BY created_at DESC, id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(SandboxState::Deleted.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list sandboxes"))?;
        rows.iter().map(decode_sandbox).collect()
    }

    /// Sets the state, the failure reason (cleared when `None`) and `updated_at`.
    pub async fn set_state(
        &self,
        id: &str,
        state: SandboxState,
        failure_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE sandboxes SET state = $1, failure_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(failure_reason)
        .bind(timestamp_text(Utc::now()))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("set sandbox state"))?;
        if result.rows_affected() == 0 {
            return Err(StoreError::SandboxNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Stores (or clears) the driver's runtime info JSON.
    pub async fn set_runtime(
        &self,
        id: &str,
        runtime_json: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE sandboxes SET runtime = $1 WHERE id = $2")
            .bind(runtime_json)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("set sandbox runtime"))?;
        if result.rows_affected() == 0 {
            return Err(StoreError::SandboxNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Replaces the sandbox's lifecycle object.
    pub async fn set_lifecycle(&self, id: &str, lifecycle: &Lifecycle) -> Result<(), StoreError> {
        let json = serde_json::to_string(lifecycle).map_err(|e| corrupt(id, "lifecycle", e))?;
        let result = sqlx::query("UPDATE sandboxes SET lifecycle = $1 WHERE id = $2")
            .bind(json)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("set sandbox lifecycle"))?;
        if result.rows_affected() == 0 {
            return Err(StoreError::SandboxNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Removes the sandbox's row (its events stay). Deleting a missing id succeeds.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete sandbox"))?;
        Ok(())
    }
}
