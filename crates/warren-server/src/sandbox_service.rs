//! The sandbox service: owns every state transition. Routes call it; it calls
//! the store and the driver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use chrono::{SubsecRound, Utc};
use rand::Rng;
use tokio::sync::{Mutex, OwnedMutexGuard};
use warren_api::{CreateSandboxRequest, ExecRequest, ExecResult, Sandbox, SandboxState};
use warren_runtime::{Driver, DriverError, RuntimeInfo, SandboxSpec};
use warren_store::{SandboxRecord, Store};

use crate::error::ApiError;
use crate::request_validation::{validate_create, validate_exec};

/// Length of a sandbox id.
pub const SANDBOX_ID_LEN: usize = 20;

/// Reason recorded for sandboxes whose processes vanished while the daemon was down.
pub const GONE_AFTER_RESTART: &str = "sandbox process is gone after daemon restart";

/// A new random, DNS-label safe sandbox id: 20 characters of `[a-z0-9]`.
pub fn new_sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..SANDBOX_ID_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Filters for listing sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes whose metadata has every one of these key/value pairs.
    pub metadata: Vec<(String, String)>,
}

impl ListFilter {
    /// Parses decoded query pairs: `state=…` and any number of `metadata.KEY=VALUE`.
    pub fn from_query_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut filter = ListFilter::default();
        for (key, value) in pairs {
            if key == "state" {
                let state = SandboxState::parse(&value).ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "unknown state {value:?}; use one of creating, running, paused, \
                         suspended, stopped, failed"
                    ))
                })?;
                filter.state = Some(state);
            } else if let Some(meta_key) = key.strip_prefix("metadata.") {
                filter.metadata.push((meta_key.to_owned(), value));
            } else {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {key:?}; use state or metadata.KEY"
                )));
            }
        }
        Ok(filter)
    }

    fn matches(&self, record: &SandboxRecord) -> bool {
        let state_ok = match self.state {
            Some(state) => record.state == state,
            None => true,
        };
        state_ok
            && self
                .metadata
                .iter()
                .all(|(k, v)| record.metadata.get(k) == Some(v))
    }
}

/// What [`SandboxService::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sandboxes found alive and adopted.
    pub adopted: usize,
    /// Sandboxes marked failed because they are gone.
    pub failed: usize,
}

/// Creates, lists, runs commands in and deletes sandboxes.
pub struct SandboxService {
    store: Store,
    driver: Arc<dyn Driver>,
    /// One lock per sandbox, held across each state transition so that, for
    /// example, a delete waits for a create in progress. Exec does not hold it
    /// while the command runs.
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn parse_runtime(record: &SandboxRecord) -> Option<RuntimeInfo> {
    let json = record.runtime.as_deref()?;
    match serde_json::from_str(json) {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(sandbox = %record.id, error = %e, "unreadable runtime info");
            None
        }
    }
}

impl SandboxService {
    /// A service over this store and driver.
    pub fn new(store: Store, driver: Arc<dyn Driver>) -> Self {
        Self {
            store,
            driver,
            locks: StdMutex::new(HashMap::new()),
        }
    }

    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            // The map is only touched in these short non-panicking blocks, so
            // a poisoned lock still holds a consistent map.
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Sets the state and records the transition as an event.
    async fn transition(
        &self,
        id: &str,
        state: SandboxState,
        reason: Option<&str>,
    ) -> Result<(), ApiError> {
        let current = self.record(id).await?.state;
        if !current.can_become(state) {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {} and cannot become {}",
                current.as_str(),
                state.as_str()
            )));
        }
        self.store.set_state(id, state, reason).await?;
        let data = match reason {
            Some(reason) => serde_json::json!({ "reason": reason }),
            None => serde_json::json!({}),
        };
        self.store.record_event(id, state.as_str(), &data).await?;
        tracing::info!(sandbox = %id, state = state.as_str(), reason, "sandbox state changed");
        Ok(())
    }

    async fn record(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(id)
            .await?
            .filter(|r| r.state != SandboxState::Deleted)
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// Validates the request, creates the sandbox and waits until it runs.
    /// A driver failure leaves the sandbox listed as `failed`.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, ApiError> {
        let valid = validate_create(req, &self.driver.capacity())?;
        if !self.driver.has_image(&valid.image) {
            return Err(ApiError::invalid_value(format!(
                "image {:?} is not available to the {} driver",
                valid.image,
                self.driver.name()
            )));
        }
        let now = Utc::now().trunc_subsecs(6);
        let record = SandboxRecord {
            id: new_sandbox_id(),
            name: valid.name,
            state: SandboxState::Creating,
            image: valid.image,
            driver: self.driver.name().to_owned(),
            resources: valid.resources,
            env: valid.env,
            workdir: valid.workdir,
            metadata: valid.metadata,
            created_at: now,
            updated_at: now,
            failure_reason: None,
            runtime: None,
            user: valid.user,
        };
        let id = record.id.clone();
        let _guard = self.lock(&id).await;
        self.store.insert_sandbox(&record).await?;
        self.store
            .record_event(&id, SandboxState::Creating.as_str(), &serde_json::json!({}))
            .await?;
        let spec = SandboxSpec {
            id: id.clone(),
            image: record.image.clone(),
            cpus: record.resources.cpus,
            // Validation caps memoryMb at 1 TiB, so this cannot overflow.
            memory_bytes: record.resources.memory_mb.saturating_mul(1024 * 1024),
            pids_limit: record.resources.pids_limit,
            disk_mb: record.resources.disk_mb,
            env: record.env.clone().into_iter().collect(),
            workdir: record.workdir.clone(),
            user: record.user.clone(),
        };
        match self.driver.create(&spec).await {
            Ok(info) => {
                let json = serde_json::to_string(&info)
                    .map_err(|e| ApiError::internal(format!("encoding runtime info: {e}")))?;
                self.store.set_runtime(&id, Some(&json)).await?;
                self.transition(&id, SandboxState::Running, None).await?;
            }
            Err(err) => {
                let reason = err.to_string();
                self.transition(&id, SandboxState::Failed, Some(&reason))
                    .await?;
                return Err(match err {
                    DriverError::UnknownImage(image) => ApiError::invalid_value(format!(
                        "image {image:?} is not available to the {} driver",
                        self.driver.name()
                    )),
                    other => ApiError::internal(format!(
                        "sandbox {id} could not be created (it is kept as failed): {other}"
                    )),
                });
            }
        }
        Ok(self.record(&id).await?.to_api())
    }

    /// The sandbox with this id.
    pub async fn get(&self, id: &str) -> Result<Sandbox, ApiError> {
        Ok(self.record(id).await?.to_api())
    }

    /// Sandboxes matching the filter, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Sandbox>, ApiError> {
        Ok(self
            .store
            .list_sandboxes()
            .await?
            .iter()
            .filter(|r| filter.matches(r))
            .map(SandboxRecord::to_api)
            .collect())
    }

    /// Destroys the sandbox's processes and files and forgets it.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let guard = self.lock(id).await;
        let record = self.record(id).await?;
        let info = parse_runtime(&record);
        self.driver
            .destroy(id, info.as_ref())
            .await
            .map_err(|e| ApiError::internal(format!("destroying sandbox {id} failed: {e}")))?;
        self.transition(id, SandboxState::Deleted, None).await?;
        self.store.delete_sandbox(id).await?;
        drop(guard);
        self.forget_lock(id);
        Ok(())
    }

    /// Runs one command to completion in a running sandbox.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        let record = self.record(id).await?;
        let spec = validate_exec(req, &record.env, &record.workdir)?;
        if record.state != SandboxState::Running {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}, not running; commands run only in running sandboxes",
                record.state.as_str()
            )));
        }
        match self.driver.exec(id, spec).await {
            Ok(outcome) => {
                if outcome.oom_killed {
                    // Best effort: the result already tells the caller.
                    if let Err(e) = self
                        .store
                        .record_event(id, "oom_killed", &serde_json::json!({}))
                        .await
                    {
                        tracing::warn!(sandbox = %id, error = %e, "could not record oom event");
                    }
                }
                Ok(ExecResult {
                    exit_code: outcome.exit_code,
                    stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
                    duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                    timed_out: outcome.timed_out,
                    oom_killed: outcome.oom_killed,
                })
            }
            Err(DriverError::AgentUnavailable(message)) => {
                let _guard = self.lock(id).await;
                // Re-read under the lock: a concurrent delete may have won.
                let current = self.record(id).await?;
                if current.state == SandboxState::Running {
                    let reason = format!("sandbox agent unavailable: {message}");
                    self.transition(id, SandboxState::Failed, Some(&reason))
                        .await?;
                }
                Err(ApiError::invalid_state(format!(
                    "sandbox is no longer running: {message}"
                )))
            }
            Err(other) => Err(ApiError::internal(format!(
                "running the command in sandbox {id} failed: {other}"
            ))),
        }
    }

    /// After a daemon restart: adopts sandboxes whose processes survived and
    /// marks the others failed.
    pub async fn recover(&self) -> Result<RecoveryReport, ApiError> {
        let mut report = RecoveryReport::default();
        for candidate in self.store.list_sandboxes().await? {
            if !matches!(
                candidate.state,
                SandboxState::Running | SandboxState::Creating
            ) {
                continue;
            }
            let _guard = self.lock(&candidate.id).await;
            let Some(record) = self.store.get_sandbox(&candidate.id).await? else {
                continue;
            };
            let outcome = match parse_runtime(&record) {
                Some(info) => self
                    .driver
                    .adopt(&record.id, &info)
                    .await
                    .map_err(|e| format!("{GONE_AFTER_RESTART}: {e}")),
                None => Err(GONE_AFTER_RESTART.to_owned()),
            };
            match outcome {
                Ok(()) => {
                    if record.state != SandboxState::Running {
                        self.transition(&record.id, SandboxState::Running, None)
                            .await?;
                    }
                    report.adopted += 1;
                }
                Err(reason) => {
                    self.transition(&record.id, SandboxState::Failed, Some(&reason))
                        .await?;
                    report.failed += 1;
                }
            }
        }
        tracing::info!(
            adopted = report.adopted,
            failed = report.failed,
            "recovered sandboxes"
        );
        Ok(report)
    }
}
