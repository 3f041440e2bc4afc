//! Snapshots and forks: capturing a sandbox's files as a read-only layer,
//! and creating sandboxes that stack it.
//!
//! A snapshot is one layer directory (`<data>/snapshots/<id>/layer`, a copy
//! of the sandbox's overlay upper directory taken while it is frozen) plus
//! the layers of the snapshot the sandbox itself came from. Sandboxes created
//! from it mount those layers read-only under their own upper directory, so
//! N forks share one copy. Snapshots are not reference-counted: deleting one
//! that a sandbox, another snapshot or a template still stacks is refused
//! (409, naming them). Fork snapshots are removed with the last sandbox that
//! uses them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use chrono::{SubsecRound, Utc};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, ErrorBody, ErrorCode, ForkRequest, ForkResult,
    Resources, Sandbox, SandboxState, Snapshot, SnapshotKind, SnapshotList, MAX_FORK_COUNT,
};
use warren_runtime::images::{ImageInfo, ImageStore};
use warren_runtime::DriverError;
use warren_store::{Lifecycle, SandboxRecord, SnapshotDefaults, SnapshotRecord};

use crate::error::ApiError;
use crate::sandbox_service::{new_sandbox_id, parse_runtime, SandboxService};
use crate::AppState;

/// What a sandbox created from a snapshot starts with.
pub(crate) struct SnapshotSource {
    /// The snapshot's id.
    pub(crate) id: String,
    /// Its layers, top first (its own, then those it builds on).
    pub(crate) layers: Vec<PathBuf>,
    /// The command an exec runs when it names none.
    pub(crate) default_command: Option<Vec<String>>,
    /// Keeps the snapshot from being deleted until the new sandbox's
    /// record (which names it) is stored.
    _in_use: OwnedRwLockReadGuard<()>,
}

/// In-memory bookkeeping of snapshots, held by the service.
#[derive(Default)]
pub(crate) struct SnapshotState {
    /// Shared by creates from a snapshot until their record is stored,
    /// exclusive while a snapshot is deleted: a deletion never misses a
    /// sandbox being created from it.
    use_lock: Arc<RwLock<()>>,
    /// Fork snapshots whose copies are being made (never released meanwhile).
    pinned: StdMutex<HashMap<String, usize>>,
}

/// Unpins a fork snapshot when dropped.
struct Pin<'a> {
    state: &'a SnapshotState,
    id: String,
}

impl SnapshotState {
    fn pin(&self, id: &str) -> Pin<'_> {
        *self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        Pin {
            state: self,
            id: id.to_owned(),
        }
    }

    fn is_pinned(&self, id: &str) -> bool {
        self.pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pinned = self.state.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = pinned.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                pinned.remove(&self.id);
            }
        }
    }
}

/// A new snapshot id: `snap_` and 20 characters of `[a-z0-9]`.
fn new_snapshot_id() -> String {
    format!("snap_{}", new_sandbox_id())
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::User => "user",
        SnapshotKind::Fork => "fork",
        SnapshotKind::Template => "template",
    }
}

fn snapshot_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no snapshot {id}; GET /v1/snapshots lists them"),
    )
}

/// What stacks a snapshot's layer.
#[derive(Debug, Default)]
struct SnapshotUsers {
    /// Sandboxes created from it or from a snapshot built on it.
    sandboxes: Vec<String>,
    /// Snapshots built on it.
    snapshots: Vec<String>,
}

/// Users of `snap` among these snapshots and sandboxes.
fn users_of(
    snap: &SnapshotRecord,
    snapshots: &[SnapshotRecord],
    sandboxes: &[SandboxRecord],
) -> SnapshotUsers {
    let Some(own) = snap.layers.first() else {
        return SnapshotUsers::default();
    };
    let built_on: Vec<&SnapshotRecord> = snapshots
        .iter()
        .filter(|s| s.id != snap.id && s.layers.contains(own))
        .collect();
    let sandboxes = sandboxes
        .iter()
        .filter(|r| {
            r.lifecycle
                .snapshot
                .as_deref()
                .is_some_and(|s| s == snap.id || built_on.iter().any(|b| b.id == s))
        })
        .map(|r| r.id.clone())
        .collect();
    SnapshotUsers {
        sandboxes,
        snapshots: built_on.iter().map(|s| s.id.clone()).collect(),
    }
}

fn to_api(rec: &SnapshotRecord, used_by: Vec<String>) -> Snapshot {
    Snapshot {
        id: rec.id.clone(),
        name: rec.name.clone(),
        kind: rec.kind,
        sandbox_id: rec.sandbox_id.clone(),
        image: rec.image.clone(),
        driver: rec.driver.clone(),
        size_bytes: rec.size_bytes,
        layer_count: u32::try_from(rec.layers.len()).unwrap_or(u32::MAX),
        used_by,
        created_at: rec.created_at,
    }
}

/// Removes a snapshot's directory; best effort.
fn remove_snapshot_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove a snapshot's files");
        }
    }
}

/// Prefix of a snapshot directory being captured.
const TMP_PREFIX: &str = ".tmp-";
/// Prefix of a deleted snapshot's directory awaiting removal.
const TRASH_PREFIX: &str = ".trash-";

/// Removes directories on a blocking thread; best effort.
async fn discard_dirs(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            remove_snapshot_dir(dir);
        }
    })
    .await;
}

impl SandboxService {
    /// `<data>/snapshots`, next to the image store (`None`: this daemon has
    /// no data directory for them).
    fn snapshots_dir(&self) -> Option<PathBuf> {
        let images = self.images()?;
        Some(images.root().parent()?.join("snapshots"))
    }

    /// The layer directories of the stored OCI image `image` (empty for the
    /// built-in image).
    fn image_layers(&self, image: &str) -> Result<Vec<PathBuf>, ApiError> {
        if image == warren_api::DEFAULT_IMAGE {
            return Ok(Vec::new());
        }
        let images = self
            .images()
            .ok_or_else(|| ApiError::invalid_value(format!("image {image:?} is not available")))?;
        let info = images
            .get(image)
            .map_err(|e| ApiError::invalid_value(format!("image {image:?}: {e}")))?;
        images
            .layer_dirs(&info)
            .map_err(|e| ApiError::internal(format!("image {image} is incomplete: {e}")))
    }

    /// Captures the sandbox's files as a new snapshot of `kind` (the
    /// sandbox is frozen during the capture). Used by the snapshot route,
    /// forks and template builds.
    pub(crate) async fn capture_snapshot(
        &self,
        sandbox_id: &str,
        name: Option<String>,
        kind: SnapshotKind,
    ) -> Result<Snapshot, ApiError> {
        let _guard = self.lock(sandbox_id).await;
        let record = self.snapshot_source_record(sandbox_id).await?;
        let (rec, _pin) = self.capture_locked(&record, name, kind).await?;
        Ok(to_api(&rec, Vec::new()))
    }

    /// [`Self::capture_snapshot`] of a fork snapshot, pinned (never
    /// released nor deleted) from before its row exists until the pin drops.
    async fn capture_fork_snapshot(
        &self,
        sandbox_id: &str,
    ) -> Result<(Snapshot, Pin<'_>), ApiError> {
        let _guard = self.lock(sandbox_id).await;
        let record = self.snapshot_source_record(sandbox_id).await?;
        let (rec, pin) = self
            .capture_locked(&record, None, SnapshotKind::Fork)
            .await?;
        let pin = pin.ok_or_else(|| ApiError::internal("a fork snapshot was not pinned"))?;
        Ok((to_api(&rec, Vec::new()), pin))
    }

    /// The sandbox's record when it can be snapshotted or forked: 404 for
    /// an unknown id, 409 for a deleted one or one not running or paused.
    async fn snapshot_source_record(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        let record = match self.record(id).await {
            Ok(record) => record,
            Err(e) if e.code == ErrorCode::NotFound => {
                // The row of a deleted sandbox is gone; its events stay.
                if !self.store.list_events(id).await?.is_empty() {
                    return Err(ApiError::invalid_state(format!(
                        "sandbox {id} is deleted; only a running or paused sandbox can be \
                         snapshotted or forked"
                    )));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match record.state {
            SandboxState::Running | SandboxState::Paused => Ok(record),
            other => Err(ApiError::invalid_state(format!(
                "sandbox {id} is {}; only a running or paused sandbox can be snapshotted or \
                 forked",
                other.as_str()
            ))),
        }
    }

    /// Captures a snapshot of `record`'s sandbox, whose lock the caller
    /// holds. A fork snapshot comes with its pin, taken before its row is
    /// stored. The layer is copied into `.tmp-<id>` and renamed to `<id>`
    /// once complete; startup removes what a crash leaves of either.
    async fn capture_locked(
        &self,
        record: &SandboxRecord,
        name: Option<String>,
        kind: SnapshotKind,
    ) -> Result<(SnapshotRecord, Option<Pin<'_>>), ApiError> {
        if let Some(name) = &name {
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(ApiError::invalid_value(
                    "a snapshot name has 1 to 256 bytes and no control characters",
                ));
            }
        }
        let id = &record.id;
        let driver = self.driver_of(record)?;
        let snapshots = driver.snapshots().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!("the {} driver cannot snapshot sandboxes", driver.name()),
            )
        })?;
        let root = self.snapshots_dir().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                "this daemon has no data directory for snapshots",
            )
        })?;
        // The layers the sandbox itself stacks come along.
        let chain = match &record.lifecycle.snapshot {
            Some(parent) => {
                self.store
                    .get_snapshot(parent)
                    .await?
                    .ok_or_else(|| {
                        ApiError::internal(format!(
                            "sandbox {id} was created from snapshot {parent}, which is gone"
                        ))
                    })?
                    .layers
            }
            None => Vec::new(),
        };
        let snap_id = new_snapshot_id();
        let dir = root.join(&snap_id);
        let layer = dir.join("layer");
        let tmp = root.join(format!("{TMP_PREFIX}{snap_id}"));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| ApiError::internal(format!("creating {} failed: {e}", tmp.display())))?;
        let paused = record.state == SandboxState::Paused;
        let size = match snapshots
            .capture_layer(id, &tmp.join("layer"), paused)
            .await
        {
            Ok(size) => size,
            Err(e) => {
                remove_snapshot_dir(&tmp);
                if !paused {
                    self.settle_after_failed_capture(record).await;
                }
                return Err(ApiError::internal(format!(
                    "capturing the files of sandbox {id} failed: {e}"
                )));
            }
        };
        let image_digest = match self.captured_image_digest(record, &tmp) {
            Ok(digest) => digest,
            Err(e) => {
                remove_snapshot_dir(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            remove_snapshot_dir(&tmp);
            return Err(ApiError::internal(format!(
                "moving snapshot {snap_id} into place failed: {e}"
            )));
        }
        // Pinned before the row exists: a delete between this capture and
        // the fork's creates cannot succeed.
        let pin = (kind == SnapshotKind::Fork).then(|| self.lifecycle.snapshots.pin(&snap_id));
        let mut layers = vec![layer];
        layers.extend(chain);
        let rec = SnapshotRecord {
            id: snap_id.clone(),
            name,
            kind,
            sandbox_id: id.clone(),
            image: record.image.clone(),
            driver: record.driver.clone(),
            layers,
            size_bytes: size,
            defaults: SnapshotDefaults {
                env: record.env.clone(),
                workdir: record.workdir.clone(),
                user: record.user.clone(),
                default_command: record.default_command.clone(),
                resources: record.resources.clone(),
                image_digest,
            },
            created_at: Utc::now().trunc_subsecs(6),
        };
        if let Err(e) = self.store.insert_snapshot(&rec).await {
            remove_snapshot_dir(&dir);
            return Err(e.into());
        }
        let event =
            serde_json::json!({ "snapshot": snap_id, "kind": kind_name(kind), "sizeBytes": size });
        if let Err(e) = self.record_event(id, "snapshot", event).await {
            tracing::warn!(sandbox = %id, error = %e, "could not record snapshot event");
        }
        tracing::info!(sandbox = %id, snapshot = %snap_id, bytes = size, "snapshot captured");
        Ok((rec, pin))
    }

    /// The digest of the image whose layers the sandbox runs on, from the
    /// record of its lower layers the capture left in `snap_dir` (the tag
    /// in the sandbox's record may name another image since a re-pull).
    /// 409 when those layers are no stored image any more.
    fn captured_image_digest(
        &self,
        record: &SandboxRecord,
        snap_dir: &Path,
    ) -> Result<Option<String>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Lowers {
            lowers: Vec<PathBuf>,
        }
        if record.image == warren_api::DEFAULT_IMAGE {
            return Ok(None);
        }
        let Some(images) = self.images() else {
            return Ok(None);
        };
        let by_name = images.get(&record.image).ok();
        let lowers = std::fs::read(snap_dir.join("lowers.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Lowers>(&bytes).ok());
        let Some(lowers) = lowers else {
            // A sandbox older than its lowers record: the tag is all we know.
            return Ok(by_name.map(|i| i.digest));
        };
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mounted: std::collections::HashSet<PathBuf> =
            lowers.lowers.iter().map(|p| canonical(p)).collect();
        let candidates = by_name.into_iter().chain(images.list().unwrap_or_default());
        for info in candidates {
            let Ok(dirs) = images.layer_dirs(&info) else {
                continue;
            };
            if !dirs.is_empty() && dirs.iter().all(|d| mounted.contains(&canonical(d))) {
                return Ok(Some(info.digest));
            }
        }
        Err(ApiError::invalid_state(format!(
            "sandbox {} runs on layers of image {} that no stored image has any more (the \
             image was re-pulled or removed); a snapshot of it could not be used",
            record.id, record.image
        )))
    }

    /// After a failed capture of a running sandbox: the driver thaws it
    /// whatever happened, but when even that failed the sandbox is frozen.
    /// Retries the thaw, and records the sandbox paused if it still fails.
    async fn settle_after_failed_capture(&self, record: &SandboxRecord) {
        let Ok(driver) = self.driver_of(record) else {
            return;
        };
        let Some(pausable) = driver.pausable() else {
            return;
        };
        if let Err(e) = pausable.resume(&record.id).await {
            tracing::error!(sandbox = %record.id, error = %e, "a sandbox stayed frozen after a failed snapshot; recording it paused");
            if let Err(e) = self
                .transition(&record.id, SandboxState::Paused, None)
                .await
            {
                tracing::error!(sandbox = %record.id, error = %e, "could not record a frozen sandbox paused");
            }
        }
    }

    /// Removes what interrupted captures and deletions left under
    /// `<data>/snapshots`: `.tmp-*` and `.trash-*` directories and snapshot
    /// directories without a row. Run at startup, before requests.
    pub(crate) async fn clean_snapshot_dirs(&self) -> Result<(), ApiError> {
        let Some(root) = self.snapshots_dir() else {
            return Ok(());
        };
        let known: std::collections::HashSet<String> = self
            .store
            .list_snapshots()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = name.starts_with(TMP_PREFIX)
                || name.starts_with(TRASH_PREFIX)
                || (name.starts_with("snap_") && !known.contains(&name));
            if leftover {
                stale.push(entry.path());
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "removing leftovers of interrupted snapshots"
            );
            discard_dirs(stale).await;
        }
        Ok(())
    }

    /// One snapshot with its users.
    pub(crate) async fn get_snapshot(&self, id: &str) -> Result<Snapshot, ApiError> {
        let rec = self
            .store
            .get_snapshot(id)
            .await?
            .ok_or_else(|| snapshot_not_found(id))?;
        let all = self.store.list_snapshots().await?;
        let sandboxes = self.store.list_sandboxes().await?;
        Ok(to_api(&rec, users_of(&rec, &all, &sandboxes).sandboxes))
    }

    /// Every snapshot with its users, newest first.
    pub(crate) async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        let all = self.store.list_snapshots().await?;
        let sandboxes = self.store.list_sandboxes().await?;
        Ok(all
            .iter()
            .map(|rec| to_api(rec, users_of(rec, &all, &sandboxes).sandboxes))
            .collect())
    }

    /// Deletes a snapshot; 409 naming what still uses it.
    pub(crate) async fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        let exclusive = self.lifecycle.snapshots.use_lock.write().await;
        let rec = self
            .store
            .get_snapshot(id)
            .await?
            .ok_or_else(|| snapshot_not_found(id))?;
        let all = self.store.list_snapshots().await?;
        let sandboxes = self.store.list_sandboxes().await?;
        let users = users_of(&rec, &all, &sandboxes);
        let templates = self.store.templates_using_snapshot(id).await?;
        let mut named = Vec::new();
        if !users.sandboxes.is_empty() {
            named.push(format!("sandboxes {}", users.sandboxes.join(", ")));
        }
        if !users.snapshots.is_empty() {
            named.push(format!("snapshots {}", users.snapshots.join(", ")));
        }
        if !templates.is_empty() {
            named.push(format!("templates {}", templates.join(", ")));
        }
        if self.lifecycle.snapshots.is_pinned(id) {
            named.push("a fork in progress".to_owned());
        }
        if !named.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "snapshot {id} is in use by {}; delete them first (snapshots are not \
                     reference-counted)",
                    named.join("; ")
                ),
            ));
        }
        let trash = self.remove_snapshot(&rec).await?;
        drop(exclusive);
        discard_dirs(trash.into_iter().collect()).await;
        // Fork snapshots it was built on may have no user left.
        let chain: Vec<PathBuf> = rec.layers.iter().skip(1).cloned().collect();
        if let Err(e) = self.release_unused_forks_of(chain).await {
            tracing::warn!(snapshot = %id, error = %e, "could not release fork snapshots");
        }
        Ok(())
    }

    /// Forgets a snapshot and moves its directory to a trash name (cheap,
    /// done under the use lock); the caller removes the returned directory
    /// with [`discard_dirs`] after releasing the lock.
    async fn remove_snapshot(&self, rec: &SnapshotRecord) -> Result<Option<PathBuf>, ApiError> {
        self.store.delete_snapshot(&rec.id).await?;
        tracing::info!(snapshot = %rec.id, "snapshot deleted");
        let Some(dir) = rec.layers.first().and_then(|l| l.parent()) else {
            return Ok(None);
        };
        let trash = dir.with_file_name(format!("{TRASH_PREFIX}{}", rec.id));
        match std::fs::rename(dir, &trash) {
            Ok(()) => Ok(Some(trash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not move a deleted snapshot's files aside; removing them in place");
                Ok(Some(dir.to_path_buf()))
            }
        }
    }

    /// After a sandbox is deleted: removes the fork snapshots of its chain
    /// that nothing uses any more. Best effort; failures are logged.
    pub(crate) async fn release_fork_snapshots(&self, record: &SandboxRecord) {
        let Some(start) = &record.lifecycle.snapshot else {
            return;
        };
        if let Err(e) = self.release_unused_forks(start).await {
            tracing::warn!(sandbox = %record.id, snapshot = %start, error = %e, "could not release fork snapshots");
        }
    }

    async fn release_unused_forks(&self, start: &str) -> Result<(), ApiError> {
        let chain = match self.store.get_snapshot(start).await? {
            Some(snap) => snap.layers,
            None => return Ok(()),
        };
        self.release_unused_forks_of(chain).await
    }

    /// Removes the fork snapshots owning these layers (top first) that
    /// nothing uses any more.
    async fn release_unused_forks_of(&self, chain: Vec<PathBuf>) -> Result<(), ApiError> {
        if chain.is_empty() {
            return Ok(());
        }
        let mut trash = Vec::new();
        let released = self.release_locked(chain, &mut trash).await;
        discard_dirs(trash).await;
        released
    }

    /// The body of [`Self::release_unused_forks_of`], under the use lock;
    /// directories to remove go to `trash`.
    async fn release_locked(
        &self,
        chain: Vec<PathBuf>,
        trash: &mut Vec<PathBuf>,
    ) -> Result<(), ApiError> {
        let _exclusive = self.lifecycle.snapshots.use_lock.write().await;
        let mut all = self.store.list_snapshots().await?;
        let sandboxes = self.store.list_sandboxes().await?;
        // Top first: a fork snapshot built on another is released before it.
        for layer in chain {
            let Some(owner) = all
                .iter()
                .find(|s| s.layers.first() == Some(&layer))
                .cloned()
            else {
                continue;
            };
            if owner.kind != SnapshotKind::Fork || self.lifecycle.snapshots.is_pinned(&owner.id) {
                continue;
            }
            let users = users_of(&owner, &all, &sandboxes);
            if !users.sandboxes.is_empty()
                || !users.snapshots.is_empty()
                || !self
                    .store
                    .templates_using_snapshot(&owner.id)
                    .await?
                    .is_empty()
            {
                continue;
            }
            trash.extend(self.remove_snapshot(&owner).await?);
            all.retain(|s| s.id != owner.id);
        }
        Ok(())
    }

    /// 409 `image_in_use` while a snapshot stacks on `image`: its sandboxes
    /// would need the image's layers.
    pub(crate) async fn refuse_image_of_snapshots(
        &self,
        image: &ImageInfo,
    ) -> Result<(), ApiError> {
        let users: Vec<String> = self
            .store
            .list_snapshots()
            .await?
            .into_iter()
            .filter(|s| {
                s.image == image.name
                    || s.image == image.digest
                    || s.defaults.image_digest.as_deref() == Some(image.digest.as_str())
                    || ImageStore::normalize_name(&s.image).is_ok_and(|n| n == image.name)
            })
            .map(|s| s.id)
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::ImageInUse,
            format!(
                "image {} is used by snapshot{} {}; delete {} first (warren snapshots rm ID)",
                image.name,
                if users.len() == 1 { "" } else { "s" },
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" },
            ),
        ))
    }

    /// When the request names a snapshot: resolves it, sets the request's
    /// image (and driver) to the snapshot's and fills env, workdir, user and
    /// resources the request leaves out with the snapshot's.
    pub(crate) async fn apply_snapshot(
        &self,
        req: &mut CreateSandboxRequest,
    ) -> Result<Option<SnapshotSource>, ApiError> {
        let Some(id) = req.snapshot.clone() else {
            return Ok(None);
        };
        let in_use = Arc::clone(&self.lifecycle.snapshots.use_lock)
            .read_owned()
            .await;
        let Some(snap) = self.store.get_snapshot(&id).await? else {
            return Err(ApiError::invalid_value(format!(
                "snapshot {id:?} does not exist; GET /v1/snapshots lists them"
            )));
        };
        if let Some(driver) = &req.driver {
            if *driver != snap.driver {
                return Err(ApiError::invalid_value(format!(
                    "snapshot {id} was taken under the {} driver; it cannot be used with {driver}",
                    snap.driver
                )));
            }
        }
        if let Some(image) = &req.image {
            let same = *image == snap.image
                || snap.defaults.image_digest.as_deref() == Some(image.as_str());
            if !same {
                return Err(ApiError::invalid_value(format!(
                    "snapshot {id} stacks on image {}; a sandbox from it cannot use {image}",
                    snap.image
                )));
            }
        }
        if let (Some(digest), Some(images)) = (&snap.defaults.image_digest, self.images()) {
            if images.get(digest).is_err() {
                return Err(ApiError::invalid_state(format!(
                    "snapshot {id} stacks on image {} at {digest}, which is no longer stored \
                     (the tag was re-pulled or removed); pull {}@{digest} to use the snapshot \
                     again",
                    snap.image,
                    snap.image.split('@').next().unwrap_or(&snap.image)
                )));
            }
        }
        req.driver = Some(snap.driver.clone());
        // The exact image the files were captured on: a re-pulled tag with
        // other layers is not silently used instead.
        req.image = Some(
            snap.defaults
                .image_digest
                .clone()
                .unwrap_or_else(|| snap.image.clone()),
        );
        let defaults = &snap.defaults;
        let env = req.env.get_or_insert_with(BTreeMap::new);
        for (key, value) in &defaults.env {
            env.entry(key.clone()).or_insert_with(|| value.clone());
        }
        if req.workdir.is_none() {
            req.workdir = Some(defaults.workdir.clone());
        }
        if req.user.is_none() {
            req.user = defaults.user.clone();
        }
        let from = &defaults.resources;
        let resources = req.resources.get_or_insert_with(Resources::default);
        resources.cpus = resources.cpus.or(Some(from.cpus));
        resources.memory_mb = resources.memory_mb.or(i64::try_from(from.memory_mb).ok());
        resources.pids_limit = resources.pids_limit.or(i64::try_from(from.pids_limit).ok());
        if resources.disk_mb.is_none() {
            resources.disk_mb = from.disk_mb.and_then(|d| i64::try_from(d).ok());
        }
        Ok(Some(SnapshotSource {
            id: snap.id,
            layers: snap.layers,
            default_command: defaults.default_command.clone(),
            _in_use: in_use,
        }))
    }

    /// `POST /v1/sandboxes/{id}/fork`: `count` new sandboxes with the
    /// parent's files (and, with `memory`, its processes' memory).
    pub(crate) async fn fork(&self, id: &str, req: ForkRequest) -> Result<ForkResult, ApiError> {
        let count = req.count.unwrap_or(1);
        if !(1..=MAX_FORK_COUNT).contains(&count) {
            return Err(ApiError::invalid_value(format!(
                "count must be between 1 and {MAX_FORK_COUNT}, not {count}"
            )));
        }
        let count = usize::try_from(count).unwrap_or(1);
        if req.memory == Some(true) {
            return self.fork_with_memory(id, count, req.metadata).await;
        }
        let parent = self.snapshot_source_record(id).await?;
        let (snap, pin) = self.capture_fork_snapshot(id).await?;
        let mut children = Vec::with_capacity(count);
        for n in 0..count {
            let child = CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                driver: Some(parent.driver.clone()),
                metadata: req.metadata.clone(),
                // Children keep the parent's egress policy and secrets; a
                // parent from before networking (no policy, loopback only)
                // gives children mode none, not the daemon's default.
                network: Some(match parent.lifecycle.network.as_ref() {
                    Some(n) => warren_api::NetworkPolicy {
                        mode: Some(n.mode),
                        allow_out: n.allow_out.clone(),
                        deny_out: n.deny_out.clone(),
                    },
                    None => warren_api::NetworkPolicy {
                        mode: Some(warren_api::NetworkMode::None),
                        ..Default::default()
                    },
                }),
                secrets: parent.lifecycle.secrets.clone(),
                ..Default::default()
            };
            match self.create_sandbox(child, Lifecycle::default()).await {
                Ok(sandbox) => children.push(sandbox),
                Err(e) => {
                    drop(pin);
                    let removed = self.undo_fork(&snap.id).await;
                    return Err(ApiError::new(
                        e.code,
                        format!(
                            "fork of sandbox {id} failed creating copy {} of {count}: {}; \
                             removed {removed} and snapshot {}",
                            n + 1,
                            e.message,
                            snap.id
                        ),
                    ));
                }
            }
        }
        drop(pin);
        self.record_fork_event(id, &snap.id, &children, false).await;
        Ok(ForkResult {
            snapshot: snap.id,
            sandboxes: children,
        })
    }

    /// Deletes every sandbox created from fork snapshot `snap_id` and the
    /// snapshot; says what it removed.
    async fn undo_fork(&self, snap_id: &str) -> String {
        let made: Vec<String> = match self.store.list_sandboxes().await {
            Ok(list) => list
                .into_iter()
                .filter(|r| r.lifecycle.snapshot.as_deref() == Some(snap_id))
                .map(|r| r.id)
                .collect(),
            Err(e) => {
                tracing::warn!(snapshot = %snap_id, error = %e, "could not list a failed fork's sandboxes");
                Vec::new()
            }
        };
        for child in &made {
            // Deleting the last one releases the fork snapshot as well.
            if let Err(e) = self.delete(child).await {
                tracing::warn!(sandbox = %child, error = %e, "could not delete a failed fork's sandbox");
            }
        }
        if let Ok(Some(rec)) = self.store.get_snapshot(snap_id).await {
            let exclusive = self.lifecycle.snapshots.use_lock.write().await;
            let removed = self.remove_snapshot(&rec).await;
            drop(exclusive);
            match removed {
                Ok(trash) => discard_dirs(trash.into_iter().collect()).await,
                Err(e) => {
                    tracing::warn!(snapshot = %snap_id, error = %e, "could not delete a failed fork's snapshot")
                }
            }
        }
        if made.is_empty() {
            "no sandbox".to_owned()
        } else {
            format!("sandboxes {}", made.join(", "))
        }
    }

    async fn record_fork_event(&self, id: &str, snap: &str, children: &[Sandbox], memory: bool) {
        let event = serde_json::json!({
            "snapshot": snap,
            "memory": memory,
            "sandboxes": children.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        });
        if let Err(e) = self.record_event(id, "fork", event).await {
            tracing::warn!(sandbox = %id, error = %e, "could not record fork event");
        }
    }

    /// A fork that restores the parent's memory in every copy (drivers with
    /// [`warren_runtime::MemoryForking`]).
    async fn fork_with_memory(
        &self,
        id: &str,
        count: usize,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<ForkResult, ApiError> {
        let guard = self.lock(id).await;
        let parent = self.snapshot_source_record(id).await?;
        let driver = Arc::clone(self.driver_of(&parent)?);
        let forking = driver.memory_forking().ok_or_else(|| {
            ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "the {} driver cannot fork with memory; fork without \"memory\" to copy \
                     the files only",
                    driver.name()
                ),
            )
        })?;
        let info = parse_runtime(&parent).ok_or_else(|| {
            ApiError::invalid_state(format!("sandbox {id} has no running processes to fork"))
        })?;
        let image_layers = self.image_layers(&parent.image)?;
        let (snap, pin) = self
            .capture_locked(&parent, None, SnapshotKind::Fork)
            .await?;
        let now = Utc::now().trunc_subsecs(6);
        let mut records = Vec::with_capacity(count);
        let mut specs = Vec::with_capacity(count);
        for _ in 0..count {
            let record = SandboxRecord {
                id: new_sandbox_id(),
                name: None,
                state: SandboxState::Creating,
                created_at: now,
                updated_at: now,
                failure_reason: None,
                runtime: None,
                metadata: metadata.clone().unwrap_or_default(),
                lifecycle: Lifecycle {
                    snapshot: Some(snap.id.clone()),
                    // Children keep the parent's egress policy and secrets.
                    network: parent
                        .lifecycle
                        .network
                        .clone()
                        .map(|n| warren_api::NetworkInfo { address: None, ..n }),
                    secrets: parent.lifecycle.secrets.clone(),
                    ..Default::default()
                },
                ..parent.clone()
            };
            specs.push(crate::sandbox_service::spec_for(
                &record,
                image_layers.clone(),
                snap.layers.clone(),
            ));
            records.push(record);
        }
        let mut failure = None;
        for record in &records {
            match self.store.insert_sandbox(record).await {
                Ok(()) => {
                    let _ = self
                        .record_event(
                            &record.id,
                            SandboxState::Creating.as_str(),
                            serde_json::json!({}),
                        )
                        .await;
                }
                Err(e) => {
                    failure = Some(ApiError::from(e));
                    break;
                }
            }
        }
        let outcome = match failure {
            Some(e) => Err(e),
            None => match forking.fork_with_memory(id, &info, &specs).await {
                Ok(infos) => Ok(infos),
                // The parent's processes did not survive the checkpoint:
                // record it as failed (under its lock) rather than running.
                Err(DriverError::Lost(reason)) => {
                    let reason = format!("lost while forking with memory: {reason}");
                    if let Err(e) = self
                        .transition(id, SandboxState::Failed, Some(&reason))
                        .await
                    {
                        tracing::warn!(sandbox = %id, error = %e, "could not record the lost parent");
                    }
                    Err(ApiError::internal(format!(
                        "forking sandbox {id} with memory failed and the sandbox is lost: {reason}"
                    )))
                }
                Err(e) => Err(ApiError::internal(format!(
                    "forking sandbox {id} with memory failed: {e}"
                ))),
            },
        };
        drop(guard);
        let result = match outcome {
            Ok(infos) => {
                let mut children = Vec::with_capacity(records.len());
                let mut failed = None;
                for (record, info) in records.iter().zip(infos) {
                    let done = async {
                        let json = serde_json::to_string(&info).map_err(|e| {
                            ApiError::internal(format!("encoding runtime info: {e}"))
                        })?;
                        self.store.set_runtime(&record.id, Some(&json)).await?;
                        // Its processes run in a fresh network namespace: it
                        // gets the parent's policy (a no-op for drivers with
                        // their own network stack, such as gVisor).
                        self.network_attach(record, &info).await?;
                        self.transition(&record.id, SandboxState::Running, None)
                            .await?;
                        Ok::<_, ApiError>(self.record(&record.id).await?.to_api())
                    }
                    .await;
                    match done {
                        Ok(sandbox) => children.push(sandbox),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => Ok(children),
                    Some(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        drop(pin);
        match result {
            Ok(children) => {
                self.record_fork_event(id, &snap.id, &children, true).await;
                Ok(ForkResult {
                    snapshot: snap.id,
                    sandboxes: children,
                })
            }
            Err(e) => {
                // Rows without runtime info: deleting them destroys nothing
                // the driver did not already clean up.
                let removed = self.undo_fork(&snap.id).await;
                Err(ApiError::new(
                    e.code,
                    format!(
                        "fork of sandbox {id} with memory failed: {}; removed {removed} and \
                         snapshot {}",
                        e.message, snap.id
                    ),
                ))
            }
        }
    }
}

/// A JSON body that may be left out (all its fields are optional).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// A fork request body. `count` is checked as a number before decoding, so
/// a count out of range is 422 whatever its JSON form (`1e30`, `1.5`, `-1`).
fn fork_request(body: &[u8]) -> Result<ForkRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ForkRequest::default());
    }
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))?;
    if let Some(count) = value.get_mut("count").filter(|c| !c.is_null()) {
        let out_of_range = || {
            ApiError::invalid_value(format!(
                "count must be a whole number between 1 and {MAX_FORK_COUNT}, not {count}"
            ))
        };
        let n = count.as_f64().ok_or_else(|| {
            ApiError::invalid_request(format!("count must be a number, not {count}"))
        })?;
        if n.fract() != 0.0 || n < 1.0 || n > MAX_FORK_COUNT as f64 {
            return Err(out_of_range());
        }
        *count = serde_json::Value::from(n as i64);
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// Capture a snapshot of a running or paused sandbox's files (it is frozen
/// during the copy). Sandboxes can then be created from it
/// (`POST /v1/sandboxes {snapshot}`).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/snapshots",
    tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, description = "The snapshot", body = Snapshot),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running or paused (invalid_state), or its driver cannot snapshot (capability_unsupported)", body = ErrorBody),
    )
)]
pub(crate) async fn create_snapshot(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let name = optional_body::<CreateSnapshotRequest>(&body)?.name;
    // In its own task: a client that disconnects does not cut the capture
    // short (a frozen sandbox, a layer without a row).
    let service = Arc::clone(&state.service);
    let snapshot = tokio::spawn(async move {
        service
            .capture_snapshot(&id, name, SnapshotKind::User)
            .await
    })
    .await
    .map_err(|e| ApiError::internal(format!("the snapshot task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

/// List snapshots, newest first, with the sandboxes that use each.
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "snapshots",
    responses((status = 200, description = "Snapshots", body = SnapshotList))
)]
pub(crate) async fn list_snapshots(
    State(state): State<AppState>,
) -> Result<Json<SnapshotList>, ApiError> {
    Ok(Json(SnapshotList {
        snapshots: state.service.list_snapshots().await?,
    }))
}

/// Get one snapshot.
#[utoipa::path(
    get,
    path = "/v1/snapshots/{id}",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        (status = 404, description = "No such snapshot", body = ErrorBody),
    )
)]
pub(crate) async fn get_snapshot(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(state.service.get_snapshot(&id).await?))
}

/// Delete a snapshot and its layer. Snapshots are not reference-counted:
/// deletion is refused (409 `conflict`, naming them) while sandboxes,
/// snapshots built on it or templates still use it. Fork snapshots are
/// deleted by themselves with the last sandbox created from them.
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{id}",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such snapshot", body = ErrorBody),
        (status = 409, description = "Still in use; the message names the users", body = ErrorBody),
    )
)]
pub(crate) async fn delete_snapshot(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fork a running or paused sandbox into `count` (1..=100) new running
/// sandboxes that share its files through one snapshot; with `memory: true`
/// (drivers that checkpoint) they also continue its processes.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/fork",
    tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ForkRequest,
    responses(
        (status = 201, description = "The new sandboxes and the snapshot they share", body = ForkResult),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is deleted, not running or paused (invalid_state), or its driver cannot fork with memory (capability_unsupported)", body = ErrorBody),
        (status = 422, description = "count outside 1..=100", body = ErrorBody),
    )
)]
pub(crate) async fn fork_sandbox(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ForkResult>), ApiError> {
    let req = fork_request(&body)?;
    let caller = caller.map_or(crate::auth::Caller::Anonymous, |axum::Extension(c)| c);
    state
        .service
        .check_create_rate(&caller, u32::try_from(req.count.unwrap_or(1)).unwrap_or(1))?;
    // In its own task: a client that disconnects does not stop a fork
    // halfway (its copies are all made, or undone).
    let service = Arc::clone(&state.service);
    let result = tokio::spawn(async move { service.fork(&id, req).await })
        .await
        .map_err(|e| ApiError::internal(format!("the fork task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(result)))
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/v1/sandboxes/{id}/fork", post(fork_sandbox))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_snapshot,
        list_snapshots,
        get_snapshot,
        delete_snapshot,
        fork_sandbox
    ),
    components(schemas(
        CreateSnapshotRequest,
        Snapshot,
        SnapshotKind,
        SnapshotList,
        ForkRequest,
        ForkResult
    )),
    tags((
        name = "snapshots",
        description = "Snapshots of sandboxes' files, sandboxes created from them, forks"
    ))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, layers: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: None,
            kind: SnapshotKind::User,
            sandbox_id: "src".into(),
            image: "host".into(),
            driver: "namespace".into(),
            layers: layers.iter().map(PathBuf::from).collect(),
            size_bytes: 0,
            defaults: SnapshotDefaults {
                env: BTreeMap::new(),
                workdir: "/workspace".into(),
                user: None,
                default_command: None,
                resources: Default::default(),
                image_digest: None,
            },
            created_at: Utc::now(),
        }
    }

    fn sandbox(id: &str, snapshot: Option<&str>) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: None,
            state: SandboxState::Running,
            image: "host".into(),
            driver: "namespace".into(),
            resources: Default::default(),
            env: BTreeMap::new(),
            metadata: BTreeMap::new(),
            workdir: "/workspace".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            failure_reason: None,
            runtime: None,
            user: None,
            default_command: None,
            lifecycle: Lifecycle {
                snapshot: snapshot.map(str::to_owned),
                ..Default::default()
            },
        }
    }

    #[test]
    fn users_include_sandboxes_of_snapshots_built_on_it() {
        let base = snap("snap_base", &["/s/base/layer"]);
        let top = snap("snap_top", &["/s/top/layer", "/s/base/layer"]);
        let other = snap("snap_other", &["/s/other/layer"]);
        let all = vec![base.clone(), top.clone(), other.clone()];
        let sandboxes = vec![
            sandbox("a", Some("snap_base")),
            sandbox("b", Some("snap_top")),
            sandbox("c", Some("snap_other")),
            sandbox("d", None),
        ];
        let users = users_of(&base, &all, &sandboxes);
        assert_eq!(users.sandboxes, ["a", "b"]);
        assert_eq!(users.snapshots, ["snap_top"]);
        let users = users_of(&top, &all, &sandboxes);
        assert_eq!(users.sandboxes, ["b"]);
        assert!(users.snapshots.is_empty());
        let users = users_of(&other, &all, &[]);
        assert!(users.sandboxes.is_empty() && users.snapshots.is_empty());
    }

    #[test]
    fn snapshot_ids_have_the_documented_shape() {
        let id = new_snapshot_id();
        assert_eq!(id.len(), 25);
        assert!(id.starts_with("snap_"));
        assert!(id[5..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn pins_count_and_release() {
        let state = SnapshotState::default();
        let first = state.pin("snap_x");
        let second = state.pin("snap_x");
        drop(first);
        assert!(state.is_pinned("snap_x"));
        drop(second);
        assert!(!state.is_pinned("snap_x"));
    }
}
