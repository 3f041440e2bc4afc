//! The sandbox service: owns every state transition. Routes call it; it calls
//! the store and the driver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use chrono::{SubsecRound, Utc};
use rand::Rng;
use tokio::sync::{Mutex, OwnedMutexGuard};
use warren_api::{
    CreateSandboxRequest, ErrorCode, ExecRequest, ExecResult, Process, Sandbox, SandboxState,
    StartProcessRequest, SIGNAL_NAMES,
};
use warren_runtime::images::{ImageError, ImageInfo, ImageStore, RemoveSummary};
use warren_runtime::{
    ChangeTracking, Driver, DriverError, FileControl, Pausable, ProcessControl, ProcessEvent,
    ProcessInfo, RuntimeInfo, SandboxSpec, SpawnSpec,
};
use warren_store::{Lifecycle, SandboxRecord, Store};

use crate::error::{image_error, ApiError};
use crate::request_validation::{validate_create, validate_exec};

/// Length of a sandbox id.
pub const SANDBOX_ID_LEN: usize = 20;

/// Largest upload accepted unless configured otherwise (4 GiB, the default
/// of `warren serve --max-upload-mb`).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4096 * 1024 * 1024;

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

/// The number of a signal in [`SIGNAL_NAMES`] (the `SIG` prefix is optional,
/// case-insensitive).
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Some(match full.as_str() {
        "SIGTERM" => 15,
        "SIGINT" => 2,
        "SIGKILL" => 9,
        "SIGHUP" => 1,
        "SIGQUIT" => 3,
        "SIGUSR1" => 10,
        "SIGUSR2" => 12,
        "SIGCONT" => 18,
        "SIGSTOP" => 19,
        _ => return None,
    })
}

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The API view of a driver's process info.
pub fn process_to_api(info: &ProcessInfo) -> Process {
    Process {
        pid: info.pid,
        tag: info.tag.clone(),
        cmd: info.argv.clone(),
        status: if info.running { "running" } else { "exited" }.to_owned(),
        exit_code: info.exit_code,
        timed_out: info.timed_out,
        stdin: info.stdin,
        pty: info.pty,
        started_at: rfc3339_ms(info.started_ms),
        ended_at: info.ended_ms.map(rfc3339_ms),
        output_bytes: info.output_bytes,
    }
}

/// A window size both of whose sides are within 1..=1000.
fn valid_pty_size(size: warren_api::PtySize) -> Result<(u16, u16), ApiError> {
    if !(1..=1000).contains(&size.cols) || !(1..=1000).contains(&size.rows) {
        return Err(ApiError::invalid_value(
            "pty cols and rows must be between 1 and 1000",
        ));
    }
    Ok((size.cols, size.rows))
}

/// 409 unless the sandbox is running. A paused sandbox's agent is frozen and
/// would not answer, so nothing reaches the driver; the message says how to
/// get it going again. `what` completes "… only in running sandboxes".
pub(crate) fn not_running(id: &str, record: &SandboxRecord, what: &str) -> Result<(), ApiError> {
    match record.state {
        SandboxState::Running => Ok(()),
        SandboxState::Paused => Err(ApiError::invalid_state(format!(
            "sandbox {id} is paused; resume it first (POST /v1/sandboxes/{id}/resume, \
             warren resume {id}): {what} only in running sandboxes"
        ))),
        other => Err(ApiError::invalid_state(format!(
            "sandbox {id} is {}, not running; {what} only in running sandboxes",
            other.as_str()
        ))),
    }
}

/// Filters for listing sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes whose metadata has every one of these key/value pairs.
    pub metadata: Vec<(String, String)>,
    /// Only the idle members of this template's warm pool (`pool=TEMPLATE`);
    /// without it, pool members are hidden.
    pub pool: Option<String>,
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
            } else if key == "pool" {
                filter.pool = Some(value);
            } else if let Some(meta_key) = key.strip_prefix("metadata.") {
                filter.metadata.push((meta_key.to_owned(), value));
            } else {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {key:?}; use state, pool or metadata.KEY"
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
            && record.lifecycle.pool == self.pool
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
    pub(crate) store: Store,
    /// The default driver (`namespace`): used when a create names none.
    driver: Arc<dyn Driver>,
    /// Every driver by name, the default one included.
    drivers: HashMap<&'static str, Arc<dyn Driver>>,
    /// Disk bound for sandboxes whose request has none.
    default_disk_mb: Option<u64>,
    /// Stored OCI images (`None`: only the built-in `host` image).
    images: Option<Arc<ImageStore>>,
    /// Held shared by a create from the moment it resolves its image until
    /// its record is stored, and exclusively by an image removal while it
    /// checks that no sandbox uses the image: a removal never misses a
    /// sandbox being created from it.
    image_use: tokio::sync::RwLock<()>,
    /// Largest file or tar upload accepted, in bytes.
    max_upload_bytes: u64,
    /// One lock per sandbox, held across each state transition so that, for
    /// example, a delete waits for a create in progress. Exec does not hold it
    /// while the command runs.
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// State of the lifetime, event, template and pool machinery.
    pub(crate) lifecycle: crate::lifecycle_state::LifecycleState,
    /// Sandbox networking (`network.rs`).
    pub(crate) net: crate::network::NetState,
    /// Exposed ports and the proxy (`ports.rs`).
    pub(crate) ports: crate::ports::PortState,
    /// Tokens, secrets and rate limits (`access.rs`).
    pub(crate) access: crate::access::AccessState,
}

/// The command an image runs when a request gives none: its `Entrypoint`
/// followed by its `Cmd`.
fn image_command(image: &ImageInfo) -> Option<Vec<String>> {
    let argv: Vec<String> = image
        .config
        .entrypoint
        .iter()
        .chain(image.config.cmd.iter())
        .cloned()
        .collect();
    (!argv.is_empty()).then_some(argv)
}

/// An image's `Env`, `WorkingDir` and `User` become the request's defaults;
/// what the request says wins.
pub(crate) fn apply_image_defaults(req: &mut CreateSandboxRequest, image: &ImageInfo) {
    let env = req.env.get_or_insert_with(Default::default);
    for entry in &image.config.env {
        if let Some((key, value)) = entry.split_once('=') {
            env.entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
        }
    }
    if env.is_empty() {
        req.env = None;
    }
    if req.workdir.is_none() {
        req.workdir = image
            .config
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'));
    }
    if req.user.is_none() {
        req.user = image
            .config
            .user
            .clone()
            .filter(|u| !matches!(u.as_str(), "" | "root" | "0" | "0:0"));
    }
}

/// What the driver needs to start the sandbox `record` describes, over
/// these image layers and snapshot layers (both top first).
pub(crate) fn spec_for(
    record: &SandboxRecord,
    layers: Vec<std::path::PathBuf>,
    snapshot_layers: Vec<std::path::PathBuf>,
) -> SandboxSpec {
    SandboxSpec {
        id: record.id.clone(),
        image: record.image.clone(),
        layers,
        snapshot_layers,
        cpus: record.resources.cpus,
        // Validation caps memoryMb at 1 TiB, so this cannot overflow.
        memory_bytes: record.resources.memory_mb.saturating_mul(1024 * 1024),
        pids_limit: record.resources.pids_limit,
        disk_mb: record.resources.disk_mb,
        env: record.env.clone().into_iter().collect(),
        workdir: record.workdir.clone(),
        user: record.user.clone(),
    }
}

pub(crate) fn parse_runtime(record: &SandboxRecord) -> Option<RuntimeInfo> {
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
        let mut drivers: HashMap<&'static str, Arc<dyn Driver>> = HashMap::new();
        drivers.insert(driver.name(), Arc::clone(&driver));
        Self {
            store,
            driver,
            drivers,
            lifecycle: Default::default(),
            net: Default::default(),
            ports: Default::default(),
            access: Default::default(),
            default_disk_mb: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            images: None,
            image_use: tokio::sync::RwLock::new(()),
            locks: StdMutex::new(HashMap::new()),
        }
    }

    /// Adds another driver, chosen by `driver` at create.
    pub fn with_driver(mut self, driver: Arc<dyn Driver>) -> Self {
        self.drivers.insert(driver.name(), driver);
        self
    }

    /// The names of the drivers this service has, sorted.
    pub fn driver_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.drivers.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The driver a create request names (the default one when `None`);
    /// 422 naming the available ones for any other name.
    pub(crate) fn driver_named(&self, name: Option<&str>) -> Result<&Arc<dyn Driver>, ApiError> {
        let Some(name) = name else {
            return Ok(&self.driver);
        };
        self.drivers.get(name).ok_or_else(|| {
            ApiError::invalid_value(format!(
                "driver {name:?} is not available on this daemon; available: {}",
                self.driver_names().join(", ")
            ))
        })
    }

    /// The driver a stored sandbox runs under.
    pub(crate) fn driver_of(&self, record: &SandboxRecord) -> Result<&Arc<dyn Driver>, ApiError> {
        self.drivers.get(record.driver.as_str()).ok_or_else(|| {
            ApiError::internal(format!(
                "sandbox {} runs under the {} driver, which this daemon was started without",
                record.id, record.driver
            ))
        })
    }

    /// Bounds the disk of sandboxes created without `diskMb` to this many MiB.
    pub fn with_default_disk_mb(mut self, default_disk_mb: Option<u64>) -> Self {
        self.default_disk_mb = default_disk_mb;
        self
    }

    /// Refuses file and tar uploads larger than this many bytes (413).
    pub fn with_max_upload_bytes(mut self, max_upload_bytes: u64) -> Self {
        self.max_upload_bytes = max_upload_bytes;
        self
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// Lets sandboxes use the images of this store.
    pub fn with_images(mut self, images: Arc<ImageStore>) -> Self {
        self.images = Some(images);
        self
    }

    /// The image store, when there is one.
    pub fn images(&self) -> Option<&Arc<ImageStore>> {
        self.images.as_ref()
    }

    /// A stored OCI image by name or digest; 422 when there is none, since
    /// the request names something that cannot be used.
    pub(crate) fn stored_image(&self, name: &str) -> Result<ImageInfo, ApiError> {
        let Some(images) = &self.images else {
            return Err(ApiError::invalid_value(format!(
                "image {name:?} is not available: this daemon has no image store"
            )));
        };
        images.get(name).map_err(|e| match e {
            ImageError::NotFound(_) | ImageError::InvalidReference(_) => {
                ApiError::invalid_value(format!(
                    "image {name:?} is not stored here; pull it (warren image pull {name}) \
                     or import it first"
                ))
            }
            other => ApiError::internal(format!("reading image {name:?}: {other}")),
        })
    }

    /// Removes a stored image, refused (409 `image_in_use`, naming them)
    /// while sandboxes use it; then frees the layers nothing else uses.
    pub async fn remove_image(&self, name: &str) -> Result<(ImageInfo, RemoveSummary), ApiError> {
        let Some(images) = self.images.clone() else {
            return Err(image_error(ImageError::NotFound(name.to_owned())));
        };
        let _exclusive = self.image_use.write().await;
        let info = {
            let (images, name) = (images.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || images.get(&name))
                .await
                .map_err(|e| ApiError::internal(format!("image store task failed: {e}")))?
                .map_err(image_error)?
        };
        let users: Vec<String> = self
            .store
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|r| {
                r.image == info.name
                    || r.image == info.digest
                    || ImageStore::normalize_name(&r.image).is_ok_and(|n| n == info.name)
            })
            .map(|r| r.id)
            .collect();
        if !users.is_empty() {
            let one = users.len() == 1;
            return Err(ApiError::new(
                ErrorCode::ImageInUse,
                format!(
                    "image {} is used by sandbox{} {}; delete {} first (warren rm {})",
                    info.name,
                    if one { "" } else { "es" },
                    users.join(", "),
                    if one { "it" } else { "them" },
                    users.join(" ")
                ),
            ));
        }
        self.refuse_image_of_snapshots(&info).await?;
        let target = info.name.clone();
        let summary = tokio::task::spawn_blocking(move || images.remove(&target))
            .await
            .map_err(|e| ApiError::internal(format!("image store task failed: {e}")))?
            .map_err(image_error)?;
        Ok((info, summary))
    }

    /// Frees layers that were kept only for a sandbox now gone (its image
    /// was removed or replaced meanwhile). Best effort: a failure is logged
    /// and the next sweep retries.
    async fn sweep_image_layers(&self) {
        let Some(images) = self.images.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || images.sweep()).await {
            Ok(Ok(swept)) if swept.layers_removed > 0 => tracing::info!(
                layers = swept.layers_removed,
                bytes = swept.bytes_freed,
                "removed image layers no sandbox or image uses"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep unused image layers"),
            Err(e) => tracing::warn!(error = %e, "image layer sweep task failed"),
        }
    }

    /// Fills `cmd` from the sandbox's default command (its image's, kept
    /// at create) when the request has neither `cmd` nor `shell`.
    fn default_command(&self, record: &SandboxRecord, req: &mut ExecRequest) {
        if req.cmd.is_none() && req.shell.is_none() {
            req.cmd = record.default_command.clone();
        }
    }

    pub(crate) async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
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

    /// Sets the state and records the transition as an event. A sandbox
    /// that becomes failed loses its network (interface, rules, address).
    pub(crate) async fn transition(
        &self,
        id: &str,
        state: SandboxState,
        reason: Option<&str>,
    ) -> Result<(), ApiError> {
        self.transition_with(id, state, reason, serde_json::Map::new())
            .await
    }

    /// Like [`Self::transition`], with `extra` fields in the event's data.
    pub(crate) async fn transition_with(
        &self,
        id: &str,
        state: SandboxState,
        reason: Option<&str>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ApiError> {
        let record = self.record(id).await?;
        let current = record.state;
        if !current.can_become(state) {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {} and cannot become {}",
                current.as_str(),
                state.as_str()
            )));
        }
        self.store.set_state(id, state, reason).await?;
        if state == SandboxState::Failed {
            // Whatever failed it (its processes died, recovery could not
            // adopt it, its network could not be set up), a failed sandbox
            // keeps no interface, firewall chain or address.
            self.network_detach(&record).await;
        }
        let mut data = extra;
        if let Some(reason) = reason {
            data.insert("reason".to_owned(), reason.into());
        }
        self.record_event(id, state.as_str(), serde_json::Value::Object(data))
            .await?;
        tracing::info!(sandbox = %id, state = state.as_str(), reason, "sandbox state changed");
        Ok(())
    }

    pub(crate) async fn record(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(id)
            .await?
            .filter(|r| r.state != SandboxState::Deleted)
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// Validates the request, creates the sandbox and waits until it runs.
    /// A driver failure leaves the sandbox listed as `failed`.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, ApiError> {
        if req.template.is_some() {
            return self.create_from_template(req).await;
        }
        self.create_sandbox(req, Lifecycle::default()).await
    }

    /// Creates a sandbox; `seed` carries lifecycle fields set by the caller
    /// (template, pool) that the request cannot.
    pub(crate) async fn create_sandbox(
        &self,
        mut req: CreateSandboxRequest,
        seed: Lifecycle,
    ) -> Result<Sandbox, ApiError> {
        let source = self.apply_snapshot(&mut req).await?;
        let mut lifecycle = self.initial_lifecycle(&req, seed)?;
        if let Some(source) = &source {
            lifecycle.snapshot = Some(source.id.clone());
        }
        let driver = Arc::clone(self.driver_named(req.driver.as_deref())?);
        lifecycle.network = self.network_for_create(driver.name(), req.network.as_ref())?;
        let secret_env = self.secret_env(&req.secrets).await?;
        lifecycle.secrets = req.secrets.clone();
        let image_use = self.image_use.read().await;
        let image = match req.image.as_deref() {
            Some(name) if name != warren_api::DEFAULT_IMAGE && !name.is_empty() => {
                let info = self.stored_image(name)?;
                apply_image_defaults(&mut req, &info);
                Some(info)
            }
            _ => None,
        };
        let mut valid = validate_create(req, &driver.capacity())?;
        if valid.resources.disk_mb.is_none() {
            valid.resources.disk_mb = self.default_disk_mb;
        }
        // The lease keeps the layers until the sandbox's own record of its
        // lower layers protects them.
        let (layers, _lease) = match (&image, &self.images) {
            (Some(info), Some(images)) => {
                valid.image = info.name.clone();
                let lease = images.lease_layers(info);
                let dirs = images.layer_dirs(info).map_err(|e| {
                    ApiError::internal(format!("image {} is incomplete: {e}", info.name))
                })?;
                (dirs, Some(lease))
            }
            _ => (Vec::new(), None),
        };
        if layers.is_empty() && !driver.has_image(&valid.image) {
            return Err(ApiError::invalid_value(format!(
                "image {:?} is not available to the {} driver",
                valid.image,
                driver.name()
            )));
        }
        let now = Utc::now().trunc_subsecs(6);
        let record = SandboxRecord {
            id: new_sandbox_id(),
            name: valid.name,
            state: SandboxState::Creating,
            image: valid.image,
            driver: driver.name().to_owned(),
            resources: valid.resources,
            env: valid.env,
            workdir: valid.workdir,
            metadata: valid.metadata,
            created_at: now,
            updated_at: now,
            failure_reason: None,
            runtime: None,
            user: valid.user,
            default_command: source
                .as_ref()
                .and_then(|s| s.default_command.clone())
                .or_else(|| image.as_ref().and_then(image_command)),
            lifecycle,
        };
        let id = record.id.clone();
        let _guard = self.lock(&id).await;
        self.store.insert_sandbox(&record).await?;
        drop(image_use);
        self.record_event(&id, SandboxState::Creating.as_str(), serde_json::json!({}))
            .await?;
        let mut spec = spec_for(
            &record,
            layers,
            source.map(|s| s.layers).unwrap_or_default(),
        );
        spec.env.extend(secret_env);
        match driver.create(&spec).await {
            Ok(info) => {
                let json = serde_json::to_string(&info)
                    .map_err(|e| ApiError::internal(format!("encoding runtime info: {e}")))?;
                self.store.set_runtime(&id, Some(&json)).await?;
                if let Err(e) = self.network_attach(&record, &info).await {
                    if let Err(destroy) = driver.destroy(&id, Some(&info)).await {
                        tracing::warn!(sandbox = %id, error = %destroy, "could not destroy a sandbox whose network failed");
                    }
                    self.store.set_runtime(&id, None).await?;
                    self.transition(&id, SandboxState::Failed, Some(&e.message))
                        .await?;
                    return Err(e);
                }
                self.transition(&id, SandboxState::Running, None).await?;
                self.start_clocks(&id).await?;
            }
            Err(err) => {
                let reason = err.to_string();
                self.transition(&id, SandboxState::Failed, Some(&reason))
                    .await?;
                return Err(match err {
                    DriverError::UnknownImage(image) => ApiError::invalid_value(format!(
                        "image {image:?} is not available to the {} driver",
                        driver.name()
                    )),
                    DriverError::Invalid(message) => ApiError::invalid_value(message),
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
        let record = self.delete_locked(id).await?;
        drop(guard);
        self.after_delete(&record).await;
        Ok(())
    }

    /// The part of [`Self::delete`] done under the sandbox's lock (which the
    /// caller holds); the caller runs [`Self::after_delete`] once it let go.
    pub(crate) async fn delete_locked(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        let record = self.record(id).await?;
        let info = parse_runtime(&record);
        self.network_detach(&record).await;
        self.driver_of(&record)?
            .destroy(id, info.as_ref())
            .await
            .map_err(|e| ApiError::internal(format!("destroying sandbox {id} failed: {e}")))?;
        self.transition(id, SandboxState::Deleted, None).await?;
        self.store.delete_sandbox(id).await?;
        Ok(record)
    }

    /// Cleanup after a delete, without the sandbox's lock.
    pub(crate) async fn after_delete(&self, record: &SandboxRecord) {
        self.forget_lock(&record.id);
        self.forget_activity(&record.id);
        self.release_fork_snapshots(record).await;
        if record.image != warren_api::DEFAULT_IMAGE {
            self.sweep_image_layers().await;
        }
    }

    /// The driver's pause capability; 409 `capability_unsupported` without.
    fn pausable(&self, record: &SandboxRecord) -> Result<&dyn Pausable, ApiError> {
        let driver = self.driver_of(record)?;
        driver.pausable().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!("the {} driver cannot pause sandboxes", driver.name()),
            )
        })
    }

    /// Freezes a running sandbox in memory: `running → paused`.
    pub async fn pause(&self, id: &str) -> Result<Sandbox, ApiError> {
        let _guard = self.lock(id).await;
        self.pause_locked(id).await
    }

    /// [`Self::pause`] for a caller holding the sandbox's lock.
    pub(crate) async fn pause_locked(&self, id: &str) -> Result<Sandbox, ApiError> {
        let record = self.record(id).await?;
        if record.state != SandboxState::Running {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}; only a running sandbox can be paused",
                record.state.as_str()
            )));
        }
        let pausable = self.pausable(&record)?;
        pausable
            .pause(id)
            .await
            .map_err(|e| ApiError::internal(format!("pausing sandbox {id} failed: {e}")))?;
        if let Err(e) = self.transition(id, SandboxState::Paused, None).await {
            // Not recorded as paused: do not leave it frozen.
            if let Err(thaw) = pausable.resume(id).await {
                tracing::warn!(sandbox = %id, error = %thaw, "could not thaw after a failed pause");
            }
            return Err(e);
        }
        Ok(self.record(id).await?.to_api())
    }

    /// Thaws a paused sandbox, or starts a suspended one again: `→ running`.
    pub async fn resume(&self, id: &str) -> Result<Sandbox, ApiError> {
        self.resume_with(id, false).await
    }

    /// [`Self::resume`]; `auto` (a request resumed it) is noted in the
    /// `running` event's data.
    pub(crate) async fn resume_with(&self, id: &str, auto: bool) -> Result<Sandbox, ApiError> {
        let _guard = self.lock(id).await;
        let record = self.record(id).await?;
        let mut extra = serde_json::Map::new();
        if auto {
            extra.insert("auto".to_owned(), true.into());
        }
        if record.state == SandboxState::Suspended {
            self.resume_suspended_locked(&record, extra).await?;
            self.note_resumed(id);
            return Ok(self.record(id).await?.to_api());
        }
        if record.state != SandboxState::Paused {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}; only a paused or suspended sandbox can be resumed",
                record.state.as_str()
            )));
        }
        let pausable = self.pausable(&record)?;
        if let Err(e) = pausable.resume(id).await {
            let err = ApiError::internal(format!("resuming sandbox {id} failed: {e}"));
            self.note_resume_failed(id, &err).await;
            return Err(err);
        }
        if let Err(e) = self
            .transition_with(id, SandboxState::Running, None, extra)
            .await
        {
            // Not recorded as running: freeze it again.
            if let Err(freeze) = pausable.pause(id).await {
                tracing::warn!(sandbox = %id, error = %freeze, "could not re-freeze after a failed resume");
            }
            self.note_resume_failed(id, &e).await;
            return Err(e);
        }
        self.note_resumed(id);
        Ok(self.record(id).await?.to_api())
    }

    /// Runs one command to completion in a running sandbox.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        let record = self.record(id).await?;
        let mut req = req;
        self.default_command(&record, &mut req);
        let spec = validate_exec(req, &record.env, &record.workdir)?;
        let record = self.active_record(id, "commands run").await?;
        let _busy = self.activity_guard(id);
        match self.driver_of(&record)?.exec(id, spec).await {
            Ok(outcome) => {
                if outcome.oom_killed {
                    // Best effort: the result already tells the caller.
                    if let Err(e) = self
                        .record_event(id, "oom_killed", serde_json::json!({}))
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
            Err(DriverError::AgentUnavailable(message)) => Err(self.agent_gone(id, &message).await),
            Err(other) => Err(ApiError::internal(format!(
                "running the command in sandbox {id} failed: {other}"
            ))),
        }
    }

    /// The sandbox's agent is gone: mark it failed (unless a concurrent
    /// delete won) and answer 409.
    async fn agent_gone(&self, id: &str, message: &str) -> ApiError {
        let _guard = self.lock(id).await;
        // Re-read under the lock: a concurrent delete may have won.
        match self.record(id).await {
            Ok(current)
                if current.state == SandboxState::Running
                    && parse_runtime(&current).is_some_and(|i| {
                        self.driver_of(&current)
                            .is_ok_and(|driver| driver.is_alive(id, &i))
                    }) =>
            {
                // The init lives: the agent could not serve this request
                // (for example the sandbox's pids limit left it no thread).
                // The sandbox is not failed; the caller may retry.
                return ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "sandbox {id} is running but its agent could not serve the request \
                         (is the sandbox out of processes or memory?): {message}"
                    ),
                );
            }
            Ok(current) if current.state == SandboxState::Running => {
                let reason = format!("sandbox agent unavailable: {message}");
                if let Err(e) = self
                    .transition(id, SandboxState::Failed, Some(&reason))
                    .await
                {
                    return e;
                }
            }
            Ok(_) => {}
            Err(e) => return e,
        }
        ApiError::invalid_state(format!("sandbox is no longer running: {message}"))
    }

    /// The running sandbox's record and its driver's process control.
    async fn processes_of(
        &self,
        id: &str,
    ) -> Result<(SandboxRecord, &dyn ProcessControl), ApiError> {
        let record = self.active_record(id, "processes run").await?;
        let driver = self.driver_of(&record)?;
        let control = driver.processes().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "the {} driver cannot run background processes",
                    driver.name()
                ),
            )
        })?;
        Ok((record, control))
    }

    /// Maps a driver error of a process operation onto the API's errors.
    async fn process_error(&self, id: &str, err: DriverError) -> ApiError {
        match err {
            DriverError::ProcessNotFound(pid) => ApiError::new(
                ErrorCode::NotFound,
                format!("no process {pid} in sandbox {id}; GET /v1/sandboxes/{id}/processes lists them"),
            ),
            DriverError::NoStdin(pid) => ApiError::invalid_state(format!(
                "process {pid} was started without stdin; start it with \"stdin\": true to write to it"
            )),
            DriverError::ProcessNotRunning(message) => ApiError::invalid_state(message),
            DriverError::Invalid(message) => ApiError::invalid_value(message),
            DriverError::AgentUnavailable(message) => self.agent_gone(id, &message).await,
            other => ApiError::internal(format!("process operation in sandbox {id} failed: {other}")),
        }
    }

    /// Starts a background process in a running sandbox.
    pub async fn start_process(
        &self,
        id: &str,
        req: StartProcessRequest,
    ) -> Result<Process, ApiError> {
        let (record, control) = self.processes_of(id).await?;
        let stdin = req.stdin.unwrap_or(false);
        let tag = req.tag;
        if let Some(tag) = &tag {
            if tag.len() > 256 || tag.contains('\0') {
                return Err(ApiError::invalid_value(
                    "tag must be at most 256 bytes without NUL characters",
                ));
            }
        }
        let pty = match req.pty {
            Some(size) => Some(valid_pty_size(size)?),
            None => None,
        };
        let mut exec = ExecRequest {
            cmd: req.cmd,
            shell: req.shell,
            cwd: req.cwd,
            env: req.env,
            stdin: None,
            timeout_ms: req.timeout_ms,
            user: req.user,
        };
        self.default_command(&record, &mut exec);
        let spec = validate_exec(exec, &record.env, &record.workdir)?;
        let spawn = SpawnSpec {
            argv: spec.argv,
            cwd: spec.cwd,
            env: spec.env,
            user: spec.user,
            stdin,
            timeout: spec.timeout,
            tag,
            buffer_bytes: None,
            pty,
        };
        match control.spawn(id, spawn).await {
            Ok(info) => Ok(process_to_api(&info)),
            // The command itself could not start (not found, bad user…).
            Err(DriverError::Invalid(message)) => Err(ApiError::invalid_value(format!(
                "the process could not start: {message}"
            ))),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// Running and recently finished processes, oldest first.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<Process>, ApiError> {
        let (_, control) = self.processes_of(id).await?;
        match control.list_processes(id).await {
            Ok(list) => Ok(list.iter().map(process_to_api).collect()),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// One process.
    pub async fn get_process(&self, id: &str, pid: i32) -> Result<Process, ApiError> {
        self.list_processes(id)
            .await?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("no process {pid} in sandbox {id}"),
                )
            })
    }

    /// The output events of a process from byte offset `from`.
    pub async fn process_output(
        &self,
        id: &str,
        pid: i32,
        from: u64,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<ProcessEvent>, ApiError> {
        let (_, control) = self.processes_of(id).await?;
        match control.subscribe_output(id, pid, from, follow).await {
            Ok(rx) => Ok(rx),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// Writes to (and optionally closes) a process's stdin.
    pub async fn process_stdin(
        &self,
        id: &str,
        pid: i32,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), ApiError> {
        let (_, control) = self.processes_of(id).await?;
        match control.write_stdin(id, pid, data, close).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// Sets a pty process's window size; 409 for a process without a pty.
    pub async fn resize_process(
        &self,
        id: &str,
        pid: i32,
        size: warren_api::PtySize,
    ) -> Result<(), ApiError> {
        let (cols, rows) = valid_pty_size(size)?;
        let (_, control) = self.processes_of(id).await?;
        match control.resize(id, pid, cols, rows).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// Sends a signal, by name, to a process's group.
    pub async fn signal_process(&self, id: &str, pid: i32, name: &str) -> Result<(), ApiError> {
        let Some(number) = signal_number(name) else {
            return Err(ApiError::invalid_request(format!(
                "unknown signal {name:?}; use one of {}",
                SIGNAL_NAMES.join(", ")
            )));
        };
        let (_, control) = self.processes_of(id).await?;
        match control.signal(id, pid, number).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.process_error(id, e).await),
        }
    }

    /// After a daemon restart: adopts sandboxes whose processes survived and
    /// marks the others failed.
    pub async fn recover(&self) -> Result<RecoveryReport, ApiError> {
        let mut report = RecoveryReport::default();
        if let Err(e) = self.clean_snapshot_dirs().await {
            tracing::warn!(error = %e, "could not clean up interrupted snapshots");
        }
        for candidate in self.store.list_sandboxes().await? {
            if !matches!(
                candidate.state,
                SandboxState::Running | SandboxState::Creating | SandboxState::Paused
            ) {
                continue;
            }
            let _guard = self.lock(&candidate.id).await;
            let Some(record) = self.store.get_sandbox(&candidate.id).await? else {
                continue;
            };
            let driver = match self.driver_of(&record) {
                Ok(driver) => Arc::clone(driver),
                Err(e) => {
                    tracing::warn!(sandbox = %record.id, error = %e, "sandbox left as it is");
                    continue;
                }
            };
            let outcome = match parse_runtime(&record) {
                // A paused sandbox's agent is frozen and would not answer the
                // handshake: it stays paused, and the driver connects to it
                // on the first request after it is resumed.
                Some(info) if record.state == SandboxState::Paused => {
                    if driver.is_alive(&record.id, &info) {
                        Ok(())
                    } else {
                        Err(format!(
                            "{GONE_AFTER_RESTART}: sandbox init (pid {}) is gone",
                            info.pid
                        ))
                    }
                }
                Some(info) => {
                    // A daemon that died between freezing a sandbox and
                    // recording it paused left it frozen while recorded
                    // running; thaw it so the handshake can succeed.
                    if let Some(pausable) = driver.pausable() {
                        if let Err(e) = pausable.resume(&record.id).await {
                            tracing::warn!(sandbox = %record.id, error = %e, "could not thaw a running sandbox during recovery");
                        }
                    }
                    driver
                        .adopt(&record.id, &info)
                        .await
                        .map_err(|e| format!("{GONE_AFTER_RESTART}: {e}"))
                }
                None => Err(GONE_AFTER_RESTART.to_owned()),
            };
            match outcome {
                Ok(()) => {
                    if let Some(info) = parse_runtime(&record) {
                        self.network_recover(&record, &info).await;
                    }
                    if record.state == SandboxState::Creating {
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

/// The file API's state checks and error mapping (routes in `files.rs`).
impl SandboxService {
    /// The running sandbox's file control; 404 for an unknown sandbox, 409
    /// when it is not running or its driver has no file API.
    pub(crate) async fn files_of(&self, id: &str) -> Result<&dyn FileControl, ApiError> {
        let record = self.active_record(id, "files are reachable").await?;
        let driver = self.driver_of(&record)?;
        driver.files().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!("the {} driver has no file API", driver.name()),
            )
        })
    }

    /// The running sandbox's change tracking; like [`Self::files_of`].
    pub(crate) async fn changes_of(&self, id: &str) -> Result<&dyn ChangeTracking, ApiError> {
        let record = self.active_record(id, "changes are listed").await?;
        let driver = self.driver_of(&record)?;
        driver.changes().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!("the {} driver cannot list changes", driver.name()),
            )
        })
    }

    /// Maps a driver error of a file operation onto the API's errors, with
    /// the driver's message.
    pub(crate) async fn file_error(&self, id: &str, err: DriverError) -> ApiError {
        match err {
            DriverError::NotFound(message) => ApiError::new(ErrorCode::NotFound, message),
            DriverError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            DriverError::PermissionDenied(message) => {
                ApiError::new(ErrorCode::PermissionDenied, message)
            }
            DriverError::NoSpace(message) => ApiError::new(ErrorCode::DiskFull, message),
            DriverError::TooLarge(message) => ApiError::new(ErrorCode::TooLarge, message),
            DriverError::Invalid(message) => ApiError::invalid_value(message),
            DriverError::AgentUnavailable(message) => self.agent_gone(id, &message).await,
            other => ApiError::internal(format!("file operation in sandbox {id} failed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_signal_name_has_a_number() {
        for name in SIGNAL_NAMES {
            assert!(signal_number(name).is_some(), "{name}");
        }
        assert_eq!(signal_number("term"), Some(15));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("SIGBOGUS"), None);
        assert_eq!(signal_number(""), None);
    }
}
