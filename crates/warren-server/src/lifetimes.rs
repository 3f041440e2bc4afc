//! Lifetimes: timeouts, idle timeouts, what they do, and auto-resume; and
//! suspend to disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, SubsecRound, Utc};
use warren_api::{
    CreateSandboxRequest, ErrorBody, ErrorCode, OnTimeout, Sandbox, SandboxEvent, SandboxEventList,
    SandboxState, UpdateSandboxRequest,
};
use warren_runtime::{SandboxSpec, Suspending};
use warren_store::{Lifecycle, SandboxRecord};

use crate::api_json::ApiJson;
use crate::error::ApiError;
use crate::sandbox_service::{not_running, parse_runtime, SandboxService};
use crate::AppState;

/// Longest timeout or idle timeout: 30 days.
pub const MAX_TIMEOUT_SECS: i64 = 30 * 24 * 3600;

/// How often the background task looks for expired sandboxes.
const TIMEOUT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Activity is written to the store at most this often per sandbox; the
/// idle check reads the in-memory value, so it is never stale.
const ACTIVITY_PERSIST_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// After a timeout action failed, it is not tried again for this long.
const FAILED_ACTION_BACKOFF: Duration = Duration::from_secs(60);

/// The activity entries of gone sandboxes are dropped every this many checks.
const PRUNE_EVERY_CHECKS: u32 = 120;

/// A sandbox's activity as seen in memory.
#[derive(Debug, Default)]
struct Activity {
    /// The last activity (a request started or ended).
    last: Option<DateTime<Utc>>,
    /// When `last` was last written to the store.
    persisted: Option<DateTime<Utc>>,
    /// Requests using the sandbox right now; it is not idle while any is.
    in_flight: usize,
}

type ActivityMap = Arc<StdMutex<HashMap<String, Activity>>>;

fn lock_map<T>(map: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only touched in short non-panicking blocks, so a
    // poisoned lock still holds a consistent map.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

/// The activity of each sandbox, newer than the store's copy, and the
/// timeout actions that failed recently.
#[derive(Default)]
pub(crate) struct ActivityTracker {
    /// Sandbox id → its activity.
    seen: ActivityMap,
    /// Sandbox id → when its timeout action last failed.
    failed: StdMutex<HashMap<String, Instant>>,
    /// Checks since the entries of gone sandboxes were last dropped.
    checks: std::sync::atomic::AtomicU32,
}

/// A request in flight in a sandbox: while it lives the sandbox is not idle;
/// dropping it counts as activity.
pub(crate) struct ActivityGuard {
    seen: ActivityMap,
    id: String,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut seen = lock_map(&self.seen);
        let activity = seen.entry(std::mem::take(&mut self.id)).or_default();
        activity.in_flight = activity.in_flight.saturating_sub(1);
        activity.last = Some(Utc::now().trunc_subsecs(6));
    }
}

impl ActivityTracker {
    /// Records activity now; true when the store's copy should be updated.
    fn touch(&self, id: &str, now: DateTime<Utc>) -> bool {
        let mut seen = lock_map(&self.seen);
        let activity = seen.entry(id.to_owned()).or_default();
        activity.last = Some(now);
        let due = activity
            .persisted
            .is_none_or(|at| now - at >= ACTIVITY_PERSIST_INTERVAL);
        if due {
            activity.persisted = Some(now);
        }
        due
    }

    /// The last activity seen in memory.
    fn last(&self, id: &str) -> Option<DateTime<Utc>> {
        lock_map(&self.seen).get(id).and_then(|a| a.last)
    }

    /// Whether requests are using the sandbox right now.
    fn busy(&self, id: &str) -> bool {
        lock_map(&self.seen)
            .get(id)
            .is_some_and(|a| a.in_flight > 0)
    }

    /// Counts a request in flight until the guard drops.
    fn begin(&self, id: &str) -> ActivityGuard {
        let mut seen = lock_map(&self.seen);
        let activity = seen.entry(id.to_owned()).or_default();
        activity.in_flight += 1;
        activity.last = Some(Utc::now().trunc_subsecs(6));
        ActivityGuard {
            seen: Arc::clone(&self.seen),
            id: id.to_owned(),
        }
    }

    fn forget(&self, id: &str) {
        lock_map(&self.seen).retain(|key, a| key != id || a.in_flight > 0);
        lock_map(&self.failed).remove(id);
    }

    /// Drops the entries of sandboxes that are gone.
    fn retain(&self, live: &std::collections::HashSet<&str>) {
        lock_map(&self.seen).retain(|id, a| a.in_flight > 0 || live.contains(id.as_str()));
        lock_map(&self.failed).retain(|id, _| live.contains(id.as_str()));
    }

    /// True about once a minute of checks: time to drop gone sandboxes.
    fn prune_due(&self) -> bool {
        let checks = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        checks.is_multiple_of(PRUNE_EVERY_CHECKS)
    }

    /// Whether the sandbox's timeout action failed less than the back-off ago.
    fn failed_recently(&self, id: &str) -> bool {
        lock_map(&self.failed)
            .get(id)
            .is_some_and(|at| at.elapsed() < FAILED_ACTION_BACKOFF)
    }

    /// Notes a failed timeout action; true when it is the first of a streak
    /// (the caller records one `timeout_failed` event then).
    fn note_failed(&self, id: &str) -> bool {
        lock_map(&self.failed)
            .insert(id.to_owned(), Instant::now())
            .is_none()
    }

    fn clear_failed(&self, id: &str) {
        lock_map(&self.failed).remove(id);
    }
}

/// A timeout value of a request: 1..=30 days, else 422 naming the field.
/// `allow_zero` accepts 0 (PATCH: clears the timeout) as `None`.
fn checked_secs(field: &str, value: i64, allow_zero: bool) -> Result<Option<u64>, ApiError> {
    if allow_zero && value == 0 {
        return Ok(None);
    }
    if !(1..=MAX_TIMEOUT_SECS).contains(&value) {
        let low = if allow_zero { "0 (none)" } else { "1" };
        return Err(ApiError::invalid_value(format!(
            "{field} must be between {low} and {MAX_TIMEOUT_SECS} (30 days), not {value}"
        )));
    }
    Ok(u64::try_from(value).ok())
}

fn deadline(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    now + chrono::TimeDelta::seconds(i64::try_from(secs).unwrap_or(MAX_TIMEOUT_SECS))
}

/// Why a sandbox's lifetime ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// `timeoutSecs` passed.
    Timeout,
    /// `idleTimeoutSecs` passed without activity.
    Idle,
}

impl Expiry {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Idle => "idle",
        }
    }
}

/// Whether (and why) this sandbox has expired at `now`, given its last
/// activity and whether requests are using it. Paused and suspended
/// sandboxes are not idle-timed-out again.
fn expiry(
    record: &SandboxRecord,
    last_activity: Option<DateTime<Utc>>,
    busy: bool,
    now: DateTime<Utc>,
) -> Option<Expiry> {
    let live = matches!(
        record.state,
        SandboxState::Running | SandboxState::Paused | SandboxState::Suspended
    );
    if !live {
        return None;
    }
    let lifecycle = &record.lifecycle;
    if lifecycle.expires_at.is_some_and(|at| at <= now) {
        return Some(Expiry::Timeout);
    }
    if record.state == SandboxState::Running && !busy {
        if let Some(idle) = lifecycle.idle_timeout_secs {
            let since = last_activity
                .into_iter()
                .chain(lifecycle.last_activity_at)
                .max()
                .unwrap_or(record.created_at);
            if deadline(since, idle) <= now {
                return Some(Expiry::Idle);
            }
        }
    }
    None
}

/// 422 unless the driver can do the timeout action (pause or suspend).
fn check_action_possible(
    driver: &dyn warren_runtime::Driver,
    action: OnTimeout,
) -> Result<(), ApiError> {
    let (able, verb) = match action {
        OnTimeout::Delete => (true, "delete"),
        OnTimeout::Pause => (driver.pausable().is_some(), "pause"),
        OnTimeout::Suspend => (driver.suspending().is_some(), "suspend"),
    };
    if !able {
        return Err(ApiError::invalid_value(format!(
            "onTimeout \"{}\" is not possible: the {} driver cannot {verb} sandboxes",
            action.as_str(),
            driver.name()
        )));
    }
    Ok(())
}

impl SandboxService {
    /// The lifecycle a new sandbox starts with: `seed` plus the request's
    /// lifetime settings, validated.
    pub(crate) fn initial_lifecycle(
        &self,
        req: &CreateSandboxRequest,
        seed: Lifecycle,
    ) -> Result<Lifecycle, ApiError> {
        let mut lifecycle = seed;
        let now = Utc::now().trunc_subsecs(6);
        if let Some(secs) = req.timeout_secs {
            lifecycle.timeout_secs = checked_secs("timeoutSecs", secs, false)?;
        }
        if let Some(secs) = req.idle_timeout_secs {
            lifecycle.idle_timeout_secs = checked_secs("idleTimeoutSecs", secs, false)?;
        }
        if let Some(action) = req.on_timeout {
            let driver = self.driver_named(req.driver.as_deref())?;
            check_action_possible(driver.as_ref(), action)?;
            lifecycle.on_timeout = action;
        }
        if let Some(auto) = req.auto_resume {
            lifecycle.auto_resume = auto;
        }
        // The clocks start now; a create restarts them once the sandbox runs.
        lifecycle.expires_at = lifecycle.timeout_secs.map(|secs| deadline(now, secs));
        if lifecycle.idle_timeout_secs.is_some() {
            lifecycle.last_activity_at = Some(now);
        }
        Ok(lifecycle)
    }

    /// Starts a new sandbox's timeout and idle clocks now that it runs (the
    /// caller holds its lock).
    pub(crate) async fn start_clocks(&self, id: &str) -> Result<(), ApiError> {
        let mut lifecycle = self.record(id).await?.lifecycle;
        if lifecycle.timeout_secs.is_none() && lifecycle.idle_timeout_secs.is_none() {
            return Ok(());
        }
        let now = Utc::now().trunc_subsecs(6);
        lifecycle.expires_at = lifecycle.timeout_secs.map(|secs| deadline(now, secs));
        if lifecycle.idle_timeout_secs.is_some() {
            lifecycle.last_activity_at = Some(now);
            self.lifecycle.activity.touch(id, now);
        }
        self.store.set_lifecycle(id, &lifecycle).await?;
        Ok(())
    }

    /// Counts a request using the sandbox until the guard drops: the sandbox
    /// is not idle meanwhile.
    pub(crate) fn activity_guard(&self, id: &str) -> ActivityGuard {
        self.lifecycle.activity.begin(id)
    }

    /// Forgets a deleted sandbox's activity.
    pub(crate) fn forget_activity(&self, id: &str) {
        self.lifecycle.activity.forget(id);
    }

    /// Records a failed resume as a `resume_failed` event (best effort).
    pub(crate) async fn note_resume_failed(&self, id: &str, err: &ApiError) {
        let data = serde_json::json!({ "reason": err.message });
        if let Err(e) = self.record_event(id, "resume_failed", data).await {
            tracing::warn!(sandbox = %id, error = %e.message, "could not record a failed resume");
        }
    }

    /// The record of a sandbox a request wants to use (exec, processes,
    /// files): counts as activity; a paused or suspended sandbox with
    /// `autoResume` is resumed first; otherwise 409 unless it is running.
    /// `what` completes "… only in running sandboxes".
    pub(crate) async fn active_record(
        &self,
        id: &str,
        what: &str,
    ) -> Result<SandboxRecord, ApiError> {
        let mut record = self.record(id).await?;
        if record.lifecycle.auto_resume
            && matches!(record.state, SandboxState::Paused | SandboxState::Suspended)
        {
            match self.resume_with(id, true).await {
                Ok(_) => {}
                // A concurrent request may have resumed it first.
                Err(e) if e.code == ErrorCode::InvalidState => {}
                Err(e) => return Err(e),
            }
            record = self.record(id).await?;
        }
        not_running(id, &record, what)?;
        self.note_activity(&record).await;
        Ok(record)
    }

    /// A resumed sandbox starts a new idle period.
    pub(crate) fn note_resumed(&self, id: &str) {
        self.lifecycle
            .activity
            .touch(id, Utc::now().trunc_subsecs(6));
    }

    /// Records activity of a sandbox (in memory; in the store at most once
    /// a second).
    /// Does not take the sandbox's lock: only `lastActivityAt` is written.
    async fn note_activity(&self, record: &SandboxRecord) {
        let now = Utc::now().trunc_subsecs(6);
        if !self.lifecycle.activity.touch(&record.id, now) {
            return;
        }
        if let Err(e) = self.store.set_last_activity(&record.id, now).await {
            tracing::warn!(sandbox = %record.id, error = %e, "could not record activity");
        }
    }

    /// The driver's suspend capability; 409 `capability_unsupported` without.
    fn suspending_of(&self, record: &SandboxRecord) -> Result<&dyn Suspending, ApiError> {
        let driver = self.driver_of(record)?;
        driver.suspending().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "the {} driver cannot suspend sandboxes (sandbox {} is {})",
                    driver.name(),
                    record.id,
                    record.state.as_str()
                ),
            )
        })
    }

    /// Suspends a running or paused sandbox to disk: `→ suspended`. Its
    /// processes stop and its memory is freed; `memoryPreserved` tells
    /// whether resume continues them or starts the sandbox again.
    pub async fn suspend(&self, id: &str) -> Result<Sandbox, ApiError> {
        let _guard = self.lock(id).await;
        self.suspend_locked(id).await
    }

    /// [`Self::suspend`] for a caller holding the sandbox's lock.
    async fn suspend_locked(&self, id: &str) -> Result<Sandbox, ApiError> {
        let record = self.record(id).await?;
        if !matches!(record.state, SandboxState::Running | SandboxState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}; only a running or paused sandbox can be suspended",
                record.state.as_str()
            )));
        }
        let suspending = self.suspending_of(&record)?;
        let info = parse_runtime(&record).ok_or_else(|| {
            ApiError::internal(format!(
                "sandbox {id} has no runtime information to suspend"
            ))
        })?;
        match suspending.suspend(id, &info).await {
            Ok(()) => {}
            Err(warren_runtime::DriverError::Lost(reason)) => {
                // The failed suspend ended the sandbox's processes.
                let reason = format!("suspend failed and ended the sandbox: {reason}");
                self.store.set_runtime(id, None).await?;
                self.transition(id, SandboxState::Failed, Some(&reason))
                    .await?;
                return Err(ApiError::internal(format!("sandbox {id}: {reason}")));
            }
            Err(warren_runtime::DriverError::Conflict(message)) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("sandbox {id} cannot be suspended: {message}"),
                ))
            }
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "suspending sandbox {id} failed: {e}"
                )))
            }
        }
        let mut lifecycle = record.lifecycle.clone();
        lifecycle.memory_preserved = Some(suspending.preserves_memory());
        self.store.set_lifecycle(id, &lifecycle).await?;
        // After the lifecycle write, which would restore the cleared address.
        self.network_detach(&record).await;
        self.store.set_runtime(id, None).await?;
        self.transition(id, SandboxState::Suspended, None).await?;
        Ok(self.record(id).await?.to_api())
    }

    /// Starts a suspended sandbox again (the caller holds its lock and has
    /// checked that it is suspended): `suspended → running`, with `extra`
    /// in the event's data. A failure leaves it suspended and records a
    /// `resume_failed` event with the reason.
    pub(crate) async fn resume_suspended_locked(
        &self,
        record: &SandboxRecord,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ApiError> {
        let id = record.id.as_str();
        let result = async {
            let suspending = self.suspending_of(record)?;
            let spec = self.spec_of(record).await?;
            let info = suspending.resume_suspended(&spec).await.map_err(|e| {
                ApiError::internal(format!("resuming suspended sandbox {id} failed: {e}"))
            })?;
            let recorded = async {
                let json = serde_json::to_string(&info)
                    .map_err(|e| ApiError::internal(format!("encoding runtime info: {e}")))?;
                self.store.set_runtime(id, Some(&json)).await?;
                let mut lifecycle = record.lifecycle.clone();
                lifecycle.memory_preserved = None;
                self.store.set_lifecycle(id, &lifecycle).await?;
                // After the lifecycle write, which would drop the new address.
                self.network_attach(record, &info).await?;
                self.transition_with(id, SandboxState::Running, None, extra)
                    .await
            }
            .await;
            if let Err(e) = recorded {
                // Not recorded as running: back to suspended on disk.
                if let Err(stop) = suspending.suspend(id, &info).await {
                    tracing::warn!(sandbox = %id, error = %stop, "could not stop a sandbox whose resume was not recorded");
                }
                if let Err(restore) = self.store.set_runtime(id, None).await {
                    tracing::warn!(sandbox = %id, error = %restore, "could not clear the runtime of a failed resume");
                }
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            self.note_resume_failed(id, e).await;
        }
        result
    }

    /// The spec a stored sandbox was created with: its image's layers and
    /// those of the snapshot it came from, its limits and defaults.
    async fn spec_of(&self, record: &SandboxRecord) -> Result<SandboxSpec, ApiError> {
        let layers = match (record.image.as_str(), self.images()) {
            (warren_api::DEFAULT_IMAGE, _) | ("", _) => Vec::new(),
            (name, Some(images)) => {
                let images = Arc::clone(images);
                let name = name.to_owned();
                tokio::task::spawn_blocking(move || {
                    let info = images.get(&name).map_err(|e| {
                        ApiError::internal(format!("image {name} of the sandbox: {e}"))
                    })?;
                    images
                        .layer_dirs(&info)
                        .map_err(|e| ApiError::internal(format!("image {name} is incomplete: {e}")))
                })
                .await
                .map_err(|e| ApiError::internal(format!("image store task failed: {e}")))??
            }
            (name, None) => {
                return Err(ApiError::internal(format!(
                    "image {name} of sandbox {} needs an image store",
                    record.id
                )))
            }
        };
        let snapshot_layers = match &record.lifecycle.snapshot {
            Some(snapshot) => {
                let mut req = CreateSandboxRequest {
                    snapshot: Some(snapshot.clone()),
                    ..Default::default()
                };
                self.apply_snapshot(&mut req)
                    .await?
                    .map(|source| source.layers)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let mut spec = crate::sandbox_service::spec_for(record, layers, snapshot_layers);
        spec.env
            .extend(self.secret_env(&record.lifecycle.secrets).await?);
        Ok(spec)
    }

    /// Changes a sandbox's lifetime settings (`PATCH /v1/sandboxes/{id}`).
    pub async fn update(&self, id: &str, req: UpdateSandboxRequest) -> Result<Sandbox, ApiError> {
        let timeout = req
            .timeout_secs
            .map(|s| checked_secs("timeoutSecs", s, true))
            .transpose()?;
        let idle = req
            .idle_timeout_secs
            .map(|s| checked_secs("idleTimeoutSecs", s, true))
            .transpose()?;
        if req.timeout_secs.is_none()
            && req.idle_timeout_secs.is_none()
            && req.on_timeout.is_none()
            && req.auto_resume.is_none()
        {
            return Err(ApiError::invalid_value(
                "nothing to change: give timeoutSecs, idleTimeoutSecs, onTimeout or autoResume",
            ));
        }
        let _guard = self.lock(id).await;
        let record = self.record(id).await?;
        if !matches!(
            record.state,
            SandboxState::Running | SandboxState::Paused | SandboxState::Suspended
        ) {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}; only a running, paused or suspended sandbox's lifetime can change",
                record.state.as_str()
            )));
        }
        if let Some(action) = req.on_timeout {
            check_action_possible(self.driver_of(&record)?.as_ref(), action)?;
        }
        let now = Utc::now().trunc_subsecs(6);
        let mut lifecycle = record.lifecycle.clone();
        if let Some(timeout) = timeout {
            lifecycle.timeout_secs = timeout;
            lifecycle.expires_at = timeout.map(|secs| deadline(now, secs));
        }
        if let Some(idle) = idle {
            lifecycle.idle_timeout_secs = idle;
            if idle.is_some() {
                // A new idle period starts now, not at the last activity.
                lifecycle.last_activity_at = Some(now);
                self.lifecycle.activity.touch(id, now);
            }
        }
        // New settings get a new chance.
        self.lifecycle.activity.clear_failed(id);
        if let Some(action) = req.on_timeout {
            lifecycle.on_timeout = action;
        }
        if let Some(auto) = req.auto_resume {
            lifecycle.auto_resume = auto;
        }
        self.store.set_lifecycle(id, &lifecycle).await?;
        let kind = if timeout.flatten().is_some() {
            "extended"
        } else {
            "updated"
        };
        let data = serde_json::to_value(&req).unwrap_or_default();
        self.record_event(id, kind, data).await?;
        Ok(self.record(id).await?.to_api())
    }

    /// The sandboxes whose timeout has passed, each with why.
    async fn due(&self) -> Vec<(String, Expiry)> {
        let activity = &self.lifecycle.activity;
        if activity.prune_due() {
            match self.store.list_sandboxes().await {
                Ok(all) => activity.retain(&all.iter().map(|r| r.id.as_str()).collect()),
                Err(e) => tracing::warn!(error = %e, "timeout check could not list sandboxes"),
            }
        }
        let ids = match self.store.timed_sandbox_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "timeout check could not list sandboxes");
                return Vec::new();
            }
        };
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            match self.store.get_sandbox(&id).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "timeout check could not read"),
            }
        }
        let now = Utc::now();
        records
            .into_iter()
            .filter(|record| !activity.failed_recently(&record.id))
            .filter_map(|record| {
                let why = expiry(
                    &record,
                    activity.last(&record.id),
                    activity.busy(&record.id),
                    now,
                )?;
                Some((record.id, why))
            })
            .collect()
    }

    /// Applies a sandbox's `onTimeout` action and records a `timeout` event;
    /// a failed action records one `timeout_failed` event and is retried
    /// after a back-off.
    async fn expire(&self, id: &str, why: Expiry) -> Result<(), ApiError> {
        let guard = self.lock(id).await;
        // Re-check under the lock: a PATCH or activity may have moved the
        // deadline, or a delete won. The action stays under the same lock.
        let current = match self.record(id).await {
            Ok(current) => current,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let activity = &self.lifecycle.activity;
        if activity.failed_recently(id)
            || expiry(&current, activity.last(id), activity.busy(id), Utc::now()) != Some(why)
        {
            return Ok(());
        }
        let action = current.lifecycle.on_timeout;
        let data = serde_json::json!({ "reason": why.as_str(), "action": action.as_str() });
        tracing::info!(sandbox = %id, reason = why.as_str(), action = action.as_str(), "sandbox timed out");
        let outcome = match action {
            OnTimeout::Delete => {
                // Recorded first: the log of a deleted sandbox ends with `deleted`.
                self.record_event(id, "timeout", data.clone()).await?;
                match self.delete_locked(id).await {
                    Ok(record) => {
                        drop(guard);
                        self.after_delete(&record).await;
                        return Ok(());
                    }
                    Err(e) => Err(e),
                }
            }
            OnTimeout::Pause if current.state == SandboxState::Running => {
                self.pause_locked(id).await.map(drop)
            }
            OnTimeout::Suspend if current.state != SandboxState::Suspended => {
                self.suspend_locked(id).await.map(drop)
            }
            OnTimeout::Pause | OnTimeout::Suspend => Ok(()),
        };
        match outcome {
            Ok(()) => {
                activity.clear_failed(id);
                if why == Expiry::Timeout {
                    // The timeout fires once; a paused or suspended sandbox stays so.
                    let mut lifecycle = self.record(id).await?.lifecycle;
                    lifecycle.expires_at = None;
                    self.store.set_lifecycle(id, &lifecycle).await?;
                }
                if action != OnTimeout::Delete {
                    self.record_event(id, "timeout", data).await?;
                }
                Ok(())
            }
            Err(e) => {
                if activity.note_failed(id) {
                    let data = serde_json::json!({
                        "reason": why.as_str(),
                        "action": action.as_str(),
                        "error": e.message,
                    });
                    if let Err(log) = self.record_event(id, "timeout_failed", data).await {
                        tracing::warn!(sandbox = %id, error = %log.message, "could not record a failed timeout action");
                    }
                }
                Err(e)
            }
        }
    }
}

/// Checks for expired sandboxes every ~500 ms until `stop` turns true; then
/// ends the open event streams. Each expiry runs in its own task, so a
/// panic in one does not stop the checks.
pub(crate) fn spawn_timeout_task(
    service: Arc<SandboxService>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TIMEOUT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => expire_due(&service).await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        service.lifecycle.events.close();
    })
}

/// Applies the timeout action of every expired sandbox once.
async fn expire_due(service: &Arc<SandboxService>) {
    let due = service.due().await;
    let mut tasks = tokio::task::JoinSet::new();
    for (id, why) in due {
        let service = Arc::clone(service);
        tasks.spawn(async move {
            if let Err(e) = service.expire(&id, why).await {
                tracing::warn!(sandbox = %id, error = %e.message, "timeout action failed");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a timeout action panicked");
        }
    }
}

/// The sandbox a request uses (exec, files, changes, processes), if any.
/// Watching files is not use: a watcher alone must not keep a sandbox busy.
fn sandbox_in_use(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/sandboxes/")?;
    let mut parts = rest.split('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    match (parts.next()?, parts.next()) {
        ("files", Some("watch")) => None,
        ("exec" | "files" | "changes" | "processes", _) => Some(id),
        _ => None,
    }
}

/// Middleware: a request using a sandbox counts as in flight (the sandbox is
/// not idle) until its response ends, streamed bodies included.
pub(crate) async fn track_activity(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let guard = sandbox_in_use(request.uri().path()).map(|id| state.service.activity_guard(id));
    let response = next.run(request).await;
    let Some(guard) = guard else {
        return response;
    };
    // A body already in memory (or of known length) or an upgrade (attach)
    // ends the request's use here.
    use axum::body::HttpBody;
    if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS
        || response.body().size_hint().exact().is_some()
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_LENGTH)
    {
        return response;
    }
    // A streamed body: in flight until it ends or the client goes.
    use futures_util::StreamExt;
    let (parts, body) = response.into_parts();
    let guarded = body.into_data_stream().map(move |chunk| {
        let _in_flight = &guard;
        chunk
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(guarded))
}

/// Suspend a sandbox to disk: its processes stop and its memory is freed.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/suspend",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, suspended; memoryPreserved says whether resume continues its processes", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running or paused (invalid_state), or its driver cannot suspend (capability_unsupported)", body = ErrorBody),
    )
)]
pub(crate) async fn suspend_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.service.suspend(&id).await?))
}

/// Change a sandbox's timeouts, timeout action or auto-resume.
#[utoipa::path(
    patch,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = UpdateSandboxRequest,
    responses(
        (status = 200, description = "The sandbox with its new settings", body = Sandbox),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, paused or suspended (invalid_state)", body = ErrorBody),
        (status = 422, description = "Nothing to change, a timeout outside 0..=30 days, or onTimeout pause/suspend for a driver that cannot", body = ErrorBody),
    )
)]
pub(crate) async fn update_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateSandboxRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.service.update(&id, req).await?))
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/v1/sandboxes/{id}/suspend", post(suspend_sandbox))
        .route(
            "/v1/sandboxes/{id}/events",
            get(crate::sandbox_events::sandbox_events),
        )
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(suspend_sandbox, update_sandbox, crate::sandbox_events::sandbox_events),
    components(schemas(UpdateSandboxRequest, OnTimeout, SandboxEvent, SandboxEventList))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_within_thirty_days() {
        assert_eq!(checked_secs("timeoutSecs", 1, false).unwrap(), Some(1));
        assert_eq!(
            checked_secs("timeoutSecs", MAX_TIMEOUT_SECS, false).unwrap(),
            Some(2_592_000)
        );
        let err = checked_secs("timeoutSecs", -1, false).unwrap_err();
        assert_eq!(err.status().as_u16(), 422);
        assert!(err.message.contains("timeoutSecs"), "{}", err.message);
        assert!(checked_secs("idleTimeoutSecs", 0, false).is_err());
        assert_eq!(checked_secs("idleTimeoutSecs", 0, true).unwrap(), None);
        assert!(checked_secs("timeoutSecs", MAX_TIMEOUT_SECS + 1, true).is_err());
    }

    #[test]
    fn requests_using_a_sandbox_are_recognised() {
        assert_eq!(sandbox_in_use("/v1/sandboxes/sb1/exec"), Some("sb1"));
        assert_eq!(sandbox_in_use("/v1/sandboxes/sb1/files"), Some("sb1"));
        assert_eq!(
            sandbox_in_use("/v1/sandboxes/sb1/processes/7/output"),
            Some("sb1")
        );
        assert_eq!(sandbox_in_use("/v1/sandboxes/sb1/files/watch"), None);
        assert_eq!(sandbox_in_use("/v1/sandboxes/sb1/events"), None);
        assert_eq!(sandbox_in_use("/v1/sandboxes/sb1"), None);
        assert_eq!(sandbox_in_use("/v1/images"), None);
    }

    #[test]
    fn a_request_in_flight_keeps_a_sandbox_busy() {
        let tracker = ActivityTracker::default();
        let first = tracker.begin("a");
        let second = tracker.begin("a");
        assert!(tracker.busy("a"));
        drop(first);
        assert!(tracker.busy("a"));
        drop(second);
        assert!(!tracker.busy("a"));
        assert!(tracker.last("a").is_some());
    }

    #[test]
    fn a_busy_sandbox_is_not_idle() {
        let now = Utc::now();
        let record = SandboxRecord {
            id: "a".to_owned(),
            name: None,
            state: SandboxState::Running,
            image: String::new(),
            driver: String::new(),
            resources: Default::default(),
            env: Default::default(),
            workdir: String::new(),
            metadata: Default::default(),
            created_at: now - chrono::TimeDelta::seconds(100),
            updated_at: now,
            failure_reason: None,
            runtime: None,
            user: None,
            default_command: None,
            lifecycle: Lifecycle {
                idle_timeout_secs: Some(5),
                ..Lifecycle::default()
            },
        };
        assert_eq!(expiry(&record, None, false, now), Some(Expiry::Idle));
        assert_eq!(expiry(&record, None, true, now), None);
        assert_eq!(expiry(&record, Some(now), false, now), None);
    }

    #[test]
    fn activity_is_persisted_at_most_once_a_second() {
        let tracker = ActivityTracker::default();
        let t0 = Utc::now();
        assert!(tracker.touch("a", t0));
        assert!(!tracker.touch("a", t0 + chrono::TimeDelta::milliseconds(300)));
        assert_eq!(
            tracker.last("a"),
            Some(t0 + chrono::TimeDelta::milliseconds(300))
        );
        assert!(tracker.touch("a", t0 + chrono::TimeDelta::milliseconds(1100)));
    }
}
