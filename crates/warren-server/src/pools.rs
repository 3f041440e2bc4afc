//! Warm pools: ready sandboxes of a template, claimed by creates.
//!
//! Pool members are ordinary sandboxes created from the template's snapshot
//! whose lifecycle names the pool (`pool`); `GET /v1/sandboxes` hides them
//! unless asked with `?pool=TEMPLATE`. The ids of the ready members are
//! queued in memory, so a claim is a pop and one store write. One refill
//! task (started by `serve`) keeps every pool at its size; claims wake it.
//!
//! A claim applies only the request's `name`, `metadata` and lifetime
//! fields (`timeoutSecs`, `idleTimeoutSecs`, `onTimeout`, `autoResume`). A
//! request that also sets `image`, `env`, `resources`, `workdir`, `user`,
//! `driver`, `snapshot`, `network` or `secrets` cannot be served by a ready member and gets a
//! normal create from the template instead, as does a claim from an empty
//! pool.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use chrono::{SubsecRound, Utc};
use tokio::sync::{watch, Notify};
use warren_api::{
    CreatePoolRequest, CreateSandboxRequest, ErrorBody, ErrorCode, Pool, PoolList, Sandbox,
    SandboxState,
};
use warren_store::{Lifecycle, PoolRecord};

use crate::api_json::ApiJson;
use crate::error::ApiError;
use crate::request_validation::validate_create;
use crate::sandbox_service::{parse_runtime, SandboxService};
use crate::AppState;

/// Largest pool.
pub const MAX_POOL_SIZE: i64 = 100;

/// How long the refill task waits after a failed create before trying the
/// same pool again.
const REFILL_BACKOFF: Duration = Duration::from_secs(2);

/// How often the refill task looks at the pools without being woken.
const REFILL_TICK: Duration = Duration::from_secs(5);

/// One pool's in-memory side.
#[derive(Debug, Default)]
struct PoolQueue {
    /// How many ready members to keep.
    size: usize,
    /// Ready members, oldest first.
    ready: VecDeque<String>,
}

/// Refill bookkeeping of the warm pools.
#[derive(Default)]
pub(crate) struct PoolState {
    /// Pools by template name.
    queues: StdMutex<HashMap<String, PoolQueue>>,
    /// Wakes the refill task (a claim, a new pool, a rebuilt template).
    wake: Notify,
}

impl PoolState {
    fn with_queues<T>(&self, f: impl FnOnce(&mut HashMap<String, PoolQueue>) -> T) -> T {
        // Only short non-panicking blocks touch the map, so a poisoned lock
        // still holds a consistent map.
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut queues)
    }

    /// Takes the oldest ready member of the pool, if any.
    fn pop(&self, template: &str) -> Option<String> {
        self.with_queues(|q| q.get_mut(template).and_then(|p| p.ready.pop_front()))
    }

    /// Queues a new ready member; `false` when the pool is gone or full
    /// (the caller then deletes the sandbox).
    fn push(&self, template: &str, id: String) -> bool {
        self.with_queues(|q| match q.get_mut(template) {
            Some(pool) if pool.ready.len() < pool.size => {
                pool.ready.push_back(id);
                true
            }
            _ => false,
        })
    }

    /// How many members are ready.
    fn ready(&self, template: &str) -> usize {
        self.with_queues(|q| q.get(template).map_or(0, |p| p.ready.len()))
    }

    /// A pool with fewer ready members than its size, skipping those for
    /// which `skip` is true: the first by name after `after` (round-robin,
    /// so one slow or failing pool does not starve the others).
    fn needing_refill(&self, skip: impl Fn(&str) -> bool, after: Option<&str>) -> Option<String> {
        self.with_queues(|q| {
            let mut wanting: Vec<&String> = q
                .iter()
                .filter(|(t, p)| p.ready.len() < p.size && !skip(t))
                .map(|(t, _)| t)
                .collect();
            wanting.sort();
            let next = after.and_then(|after| wanting.iter().find(|t| t.as_str() > after));
            next.or(wanting.first()).map(|t| (*t).clone())
        })
    }

    /// Adds (or resizes) a pool.
    fn add(&self, template: &str, size: usize) {
        self.with_queues(|q| q.entry(template.to_owned()).or_default().size = size);
        self.wake.notify_one();
    }

    /// Forgets a pool; returns its ready members.
    fn remove(&self, template: &str) -> Vec<String> {
        self.with_queues(|q| {
            q.remove(template)
                .map(|p| p.ready.into_iter().collect())
                .unwrap_or_default()
        })
    }

    /// Takes every ready member, keeping the pool.
    fn drain(&self, template: &str) -> Vec<String> {
        self.with_queues(|q| {
            q.get_mut(template)
                .map(|p| p.ready.drain(..).collect())
                .unwrap_or_default()
        })
    }
}

/// Whether a claim can serve this request: it sets nothing that a ready
/// member was created without.
fn claimable(req: &CreateSandboxRequest) -> bool {
    req.image.is_none()
        && req.env.is_none()
        && req.resources.is_none()
        && req.workdir.is_none()
        && req.user.is_none()
        && req.driver.is_none()
        && req.snapshot.is_none()
        && req.network.is_none()
        && req.secrets.is_empty()
}

impl SandboxService {
    /// Claims a ready member of the template's pool for `req` (whose
    /// `template` and `fromPool` were taken out): `None` when the pool is
    /// empty or absent, or the request asks for more than a claim applies.
    pub(crate) async fn claim_from_pool(
        &self,
        template: &str,
        req: &CreateSandboxRequest,
    ) -> Result<Option<Sandbox>, ApiError> {
        if !claimable(req) {
            return Ok(None);
        }
        // Validate before taking a member, so a bad request loses none.
        let checked = validate_create(
            CreateSandboxRequest {
                name: req.name.clone(),
                metadata: req.metadata.clone(),
                ..CreateSandboxRequest::default()
            },
            &self.driver_named(None)?.capacity(),
        )?;
        self.initial_lifecycle(req, Lifecycle::default())?;
        while let Some(id) = self.lifecycle.pools.pop(template) {
            self.lifecycle.pools.wake.notify_one();
            let guard = self.lock(&id).await;
            let record = match self.store.get_sandbox(&id).await? {
                Some(r)
                    if r.state == SandboxState::Running
                        && r.lifecycle.pool.as_deref() == Some(template) =>
                {
                    r
                }
                _ => {
                    drop(guard);
                    self.discard_member(&id, template).await;
                    continue;
                }
            };
            // A member whose processes died (killed, OOM) is no use.
            let alive = match (self.driver_of(&record), parse_runtime(&record)) {
                (Ok(driver), Some(info)) => driver.is_alive(&id, &info),
                _ => false,
            };
            if !alive {
                drop(guard);
                tracing::info!(sandbox = %id, template, "a warm pool member is not running any more; deleting it");
                self.discard_member(&id, template).await;
                continue;
            }
            // The member's network (policy and address: its interface and
            // firewall rules stay) and ports come with it.
            let seed = Lifecycle {
                snapshot: record.lifecycle.snapshot.clone(),
                template: Some(template.to_owned()),
                network: record.lifecycle.network.clone(),
                ports: record.lifecycle.ports.clone(),
                secrets: record.lifecycle.secrets.clone(),
                ..Lifecycle::default()
            };
            let mut lifecycle = self.initial_lifecycle(req, seed)?;
            // The idle clock starts at the claim, not at the member's
            // creation.
            lifecycle.last_activity_at = Some(Utc::now().trunc_subsecs(6));
            self.store
                .claim_pooled_sandbox(&id, checked.name.as_deref(), &checked.metadata, &lifecycle)
                .await?;
            drop(guard);
            let mut record = record;
            record.name = checked.name;
            record.metadata = checked.metadata;
            record.lifecycle = lifecycle;
            tracing::debug!(sandbox = %id, template, "claimed from the warm pool");
            return Ok(Some(record.to_api()));
        }
        Ok(None)
    }

    /// Deletes a member of the template's pool nobody will use (best
    /// effort). Under the sandbox's lock it checks that the sandbox is still
    /// a member: one claimed meanwhile is somebody's sandbox and stays.
    async fn discard_member(&self, id: &str, template: &str) {
        let guard = self.lock(id).await;
        match self.store.get_sandbox(id).await {
            Ok(Some(record)) if record.lifecycle.pool.as_deref() == Some(template) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "could not read a pool member");
                return;
            }
        }
        match self.delete_locked(id).await {
            Ok(record) => {
                drop(guard);
                self.after_delete(&record).await;
            }
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "could not delete a pool member"),
        }
    }

    /// Deletes the idle members of a pool (after its template was rebuilt);
    /// the refill task makes new ones.
    pub(crate) async fn flush_pool(&self, template: &str) {
        for id in self.lifecycle.pools.drain(template) {
            self.discard_member(&id, template).await;
        }
        self.lifecycle.pools.wake.notify_one();
    }

    /// Creates one member of the template's pool and queues it.
    async fn add_pool_member(&self, template: &str) -> Result<(), ApiError> {
        let (_, snapshot) = self.ready_template(template).await?;
        let req = CreateSandboxRequest {
            snapshot: Some(snapshot.clone()),
            ..CreateSandboxRequest::default()
        };
        let seed = Lifecycle {
            template: Some(template.to_owned()),
            pool: Some(template.to_owned()),
            ..Lifecycle::default()
        };
        let sandbox = self.create_sandbox(req, seed).await?;
        // A rebuild that finished meanwhile flushed the pool already.
        let current = self.ready_template(template).await.ok().map(|(_, s)| s);
        if current.as_deref() != Some(snapshot.as_str())
            || !self.lifecycle.pools.push(template, sandbox.id.clone())
        {
            // The template was rebuilt, or the pool went away (or was
            // resized) meanwhile.
            self.discard_member(&sandbox.id, template).await;
        }
        Ok(())
    }

    /// Loads the pools and re-queues the members that still run (after a
    /// restart); members that do not run or whose pool is gone are deleted.
    /// `serve` runs it before it binds its listeners.
    pub(crate) async fn recover_pools(&self) -> Result<(), ApiError> {
        let pools = self.store.list_pools().await?;
        for pool in &pools {
            self.lifecycle
                .pools
                .add(&pool.template, usize::try_from(pool.size).unwrap_or(0));
        }
        for record in self.store.list_sandboxes().await? {
            let Some(template) = record.lifecycle.pool.as_deref() else {
                continue;
            };
            let queued = record.state == SandboxState::Running
                && self.lifecycle.pools.push(template, record.id.clone());
            if !queued {
                self.discard_member(&record.id, template).await;
            }
        }
        Ok(())
    }

    /// `POST /v1/pools`.
    pub(crate) async fn create_pool(&self, req: CreatePoolRequest) -> Result<Pool, ApiError> {
        if !(1..=MAX_POOL_SIZE).contains(&req.size) {
            return Err(ApiError::invalid_value(format!(
                "size must be between 1 and {MAX_POOL_SIZE}, not {}",
                req.size
            )));
        }
        // Serialized with builds and deletes of the template.
        let _guard = self.lock(&format!("template:{}", req.template)).await;
        self.ready_template(&req.template).await?;
        let record = PoolRecord {
            template: req.template.clone(),
            size: u64::try_from(req.size).unwrap_or(1),
            created_at: Utc::now().trunc_subsecs(6),
        };
        if !self.store.insert_pool(&record).await? {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "template {} already has a warm pool; remove it first (warren pool rm {})",
                    req.template, req.template
                ),
            ));
        }
        self.lifecycle
            .pools
            .add(&record.template, usize::try_from(record.size).unwrap_or(1));
        Ok(self.pool_to_api(&record))
    }

    fn pool_to_api(&self, record: &PoolRecord) -> Pool {
        Pool {
            template: record.template.clone(),
            size: record.size,
            ready: self.lifecycle.pools.ready(&record.template) as u64,
            created_at: record.created_at,
        }
    }

    /// `GET /v1/pools/{template}`.
    pub(crate) async fn get_pool(&self, template: &str) -> Result<Pool, ApiError> {
        let record = self
            .store
            .get_pool(template)
            .await?
            .ok_or_else(|| pool_not_found(template))?;
        Ok(self.pool_to_api(&record))
    }

    /// `GET /v1/pools`.
    pub(crate) async fn list_pools(&self) -> Result<Vec<Pool>, ApiError> {
        Ok(self
            .store
            .list_pools()
            .await?
            .iter()
            .map(|r| self.pool_to_api(r))
            .collect())
    }

    /// `DELETE /v1/pools/{template}`: forgets the pool and deletes its
    /// idle members (claimed sandboxes are not touched).
    pub(crate) async fn delete_pool(&self, template: &str) -> Result<(), ApiError> {
        // Serialized with builds and deletes of the template.
        let _guard = self.lock(&format!("template:{template}")).await;
        if !self.store.delete_pool(template).await? {
            return Err(pool_not_found(template));
        }
        for id in self.lifecycle.pools.remove(template) {
            self.discard_member(&id, template).await;
        }
        // Members not queued (being created, or left by an earlier run).
        for record in self.store.list_sandboxes().await? {
            if record.lifecycle.pool.as_deref() == Some(template) {
                self.discard_member(&record.id, template).await;
            }
        }
        Ok(())
    }
}

fn pool_not_found(template: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("template {template:?} has no warm pool; `warren pool ls` lists them"),
    )
}

/// Starts the task that keeps every pool at its size; it stops when `stop`
/// turns true. The pools were recovered before (`recover_pools`).
pub(crate) fn start_refill(
    service: Arc<SandboxService>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Pools whose last create failed: when to retry, and the error
        // last logged (a repeated error is not logged again).
        let mut failing: HashMap<String, (Instant, String)> = HashMap::new();
        let mut last: Option<String> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let now = Instant::now();
            let next = service.lifecycle.pools.needing_refill(
                |t| failing.get(t).is_some_and(|(retry_at, _)| *retry_at > now),
                last.as_deref(),
            );
            match next {
                Some(template) => {
                    match service.add_pool_member(&template).await {
                        Ok(()) => {
                            if failing.remove(&template).is_some() {
                                tracing::info!(template = %template, "warm pool refills again");
                            }
                        }
                        Err(e) => {
                            let message = e.to_string();
                            let repeated = failing
                                .get(&template)
                                .is_some_and(|(_, last)| *last == message);
                            if !repeated {
                                tracing::warn!(template = %template, error = %message, "could not refill a warm pool; retrying");
                            }
                            failing.insert(
                                template.clone(),
                                (Instant::now() + REFILL_BACKOFF, message),
                            );
                        }
                    }
                    last = Some(template);
                }
                None => {
                    // Sleep until the earliest retry, or a tick.
                    let pause = failing
                        .values()
                        .filter(|(at, _)| *at > now)
                        .map(|(at, _)| at.saturating_duration_since(now))
                        .min()
                        .map_or(REFILL_TICK, |d| d.min(REFILL_TICK));
                    tokio::select! {
                        _ = service.lifecycle.pools.wake.notified() => {}
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        tracing::debug!("warm pool refill stopped");
    })
}

/// Create a warm pool for a template.
#[utoipa::path(
    post,
    path = "/v1/pools",
    tag = "pools",
    request_body = CreatePoolRequest,
    responses(
        (status = 201, description = "The pool; it fills in the background", body = Pool),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "The template already has a pool (conflict) or is not ready (invalid_state)", body = ErrorBody),
        (status = 422, description = "Size outside 1..=100", body = ErrorBody),
    )
)]
pub async fn create_pool(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> Result<(StatusCode, Json<Pool>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.service.create_pool(req).await?),
    ))
}

/// List warm pools by template name.
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "pools",
    responses((status = 200, description = "Pools", body = PoolList))
)]
pub async fn list_pools(State(state): State<AppState>) -> Result<Json<PoolList>, ApiError> {
    Ok(Json(PoolList {
        pools: state.service.list_pools().await?,
    }))
}

/// Get one warm pool.
#[utoipa::path(
    get,
    path = "/v1/pools/{template}",
    tag = "pools",
    params(("template" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "The pool", body = Pool),
        (status = 404, description = "No pool for this template", body = ErrorBody),
    )
)]
pub async fn get_pool(
    State(state): State<AppState>,
    Path(template): Path<String>,
) -> Result<Json<Pool>, ApiError> {
    Ok(Json(state.service.get_pool(&template).await?))
}

/// Delete a warm pool and its idle sandboxes.
#[utoipa::path(
    delete,
    path = "/v1/pools/{template}",
    tag = "pools",
    params(("template" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Deleted, with its idle sandboxes"),
        (status = 404, description = "No pool for this template", body = ErrorBody),
    )
)]
pub async fn delete_pool(
    State(state): State<AppState>,
    Path(template): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_pool(&template).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/v1/pools", post(create_pool).get(list_pools))
        .route("/v1/pools/{template}", get(get_pool).delete(delete_pool))
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_pool, list_pools, get_pool, delete_pool),
    components(schemas(CreatePoolRequest, Pool, PoolList)),
    tags((name = "pools", description = "Warm pools: ready sandboxes of a template, claimed by POST /v1/sandboxes {template, fromPool: true}"))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_respect_size_and_order() {
        let state = PoolState::default();
        assert!(!state.push("t", "a".into()), "no pool yet");
        state.add("t", 2);
        assert!(state.push("t", "a".into()));
        assert!(state.push("t", "b".into()));
        assert!(!state.push("t", "c".into()), "full");
        assert_eq!(state.needing_refill(|_| false, None), None);
        assert_eq!(state.pop("t").as_deref(), Some("a"));
        assert_eq!(state.needing_refill(|_| false, None).as_deref(), Some("t"));
        assert_eq!(state.needing_refill(|t| t == "t", None), None);
        assert_eq!(state.remove("t"), vec!["b".to_owned()]);
        assert_eq!(state.pop("t"), None);
    }

    #[test]
    fn refills_go_round_robin() {
        let state = PoolState::default();
        state.add("a", 1);
        state.add("b", 1);
        state.add("c", 1);
        let next = |after: Option<&str>| state.needing_refill(|_| false, after);
        assert_eq!(next(None).as_deref(), Some("a"));
        assert_eq!(next(Some("a")).as_deref(), Some("b"));
        assert_eq!(next(Some("b")).as_deref(), Some("c"));
        assert_eq!(next(Some("c")).as_deref(), Some("a"), "wraps around");
        assert_eq!(
            state.needing_refill(|t| t == "b", Some("a")).as_deref(),
            Some("c"),
            "a failing pool waits"
        );
    }

    #[test]
    fn only_name_metadata_and_lifetimes_are_claimable() {
        let mut req = CreateSandboxRequest {
            name: Some("n".into()),
            timeout_secs: Some(60),
            ..CreateSandboxRequest::default()
        };
        assert!(claimable(&req));
        req.env = Some(Default::default());
        assert!(!claimable(&req));
    }
}
