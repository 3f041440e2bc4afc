//! Templates: a recipe built once into a snapshot that sandboxes fork from.
//!
//! `POST /v1/templates` answers with an NDJSON stream of
//! [`TemplateBuildEvent`]s. The build runs in its own task, so a client that
//! goes away mid-build changes nothing: the build finishes (or fails) and
//! deletes its builder sandbox either way.
//!
//! A template's `snapshot` is its last ready build: a rebuild (or a failed
//! rebuild) leaves it usable, and its pool is flushed only when the new
//! build is ready. `state` and `failureReason` describe the latest build.
//! Each setup command has a deadline ([`SETUP_COMMAND_TIMEOUT`]); builds are
//! cancelled at shutdown, and a build cut short by a crash is marked failed
//! (and its builder deleted) at the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::{SubsecRound, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use warren_api::{
    CreateSandboxRequest, CreateTemplateRequest, ErrorBody, ErrorCode, Sandbox, SnapshotKind,
    StartProcessRequest, Template, TemplateBuildEvent, TemplateList, TemplateRemoved,
    TemplateState,
};
use warren_runtime::ProcessEvent;
use warren_store::{Lifecycle, TemplateRecord};

use crate::api_json::ApiJson;
use crate::error::ApiError;
use crate::request_validation::validate_create;
use crate::sandbox_service::{apply_image_defaults, SandboxService};
use crate::AppState;

/// Most setup commands a recipe may have.
pub const MAX_SETUP_COMMANDS: usize = 100;

/// Bytes of a failed command's output kept in the failure reason.
const OUTPUT_TAIL_BYTES: usize = 2048;

/// Events buffered for a slow reader; output beyond is dropped (with one
/// notice), steps and the outcome wait for the reader.
const EVENT_BUFFER: usize = 256;

/// How long one setup command may run.
pub const SETUP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long shutdown waits for cancelled builds to delete their builders.
const BUILD_STOP_GRACE: Duration = Duration::from_secs(30);

/// Why a build cut short by a restart failed.
const RESTARTED_REASON: &str = "the daemon restarted during the build";

/// sha256 hex of the canonical JSON of the recipe (field order is the
/// struct's, maps are sorted) and the digest of its resolved image: a
/// changed recipe or a re-pulled image has a different hash. Spellings that
/// mean the same (no env and `{}`, no image and `host`, no resources and
/// all-unset resources) hash the same.
pub(crate) fn recipe_hash(recipe: &CreateTemplateRequest, image_digest: Option<&str>) -> String {
    let mut canonical = recipe.clone();
    if canonical.env.as_ref().is_some_and(|env| env.is_empty()) {
        canonical.env = None;
    }
    if canonical
        .image
        .as_deref()
        .is_some_and(|image| image.is_empty() || image == warren_api::DEFAULT_IMAGE)
    {
        canonical.image = None;
    }
    if canonical.resources.as_ref().is_some_and(|r| {
        r.cpus.is_none() && r.memory_mb.is_none() && r.pids_limit.is_none() && r.disk_mb.is_none()
    }) {
        canonical.resources = None;
    }
    let json = serde_json::to_vec(&(&canonical, image_digest)).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 sequence
/// that the next chunk completes.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let needed = match byte {
            0xF0..=0xF4 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// Appends `data` to `pending` and takes out the text that is complete; a
/// character split across chunks waits in `pending` for its other bytes.
fn take_text(pending: &mut Vec<u8>, data: &[u8]) -> String {
    pending.extend_from_slice(data);
    let complete = pending.len() - incomplete_utf8_tail(pending);
    let text = String::from_utf8_lossy(&pending[..complete]).into_owned();
    pending.drain(..complete);
    text
}

/// Whether `name` is a DNS label: 1..=63 of `[a-z0-9-]`, not starting or
/// ending with `-`.
pub(crate) fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// 422 naming the field for recipes that cannot be built.
fn validate_recipe(recipe: &CreateTemplateRequest) -> Result<(), ApiError> {
    if !is_dns_label(&recipe.name) {
        return Err(ApiError::invalid_value(format!(
            "name {:?} must be a DNS label: 1 to 63 lowercase letters, digits and '-', \
             not starting or ending with '-'",
            recipe.name
        )));
    }
    if recipe.setup.len() > MAX_SETUP_COMMANDS {
        return Err(ApiError::invalid_value(format!(
            "setup has {} commands; at most {MAX_SETUP_COMMANDS} are allowed",
            recipe.setup.len()
        )));
    }
    for (i, command) in recipe.setup.iter().enumerate() {
        if command.trim().is_empty() {
            return Err(ApiError::invalid_value(format!(
                "setup[{i}] is empty; every setup command must be a non-empty shell command"
            )));
        }
        if command.contains('\0') {
            return Err(ApiError::invalid_value(format!(
                "setup[{i}] contains a NUL character"
            )));
        }
    }
    Ok(())
}

fn template_not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no template {name:?}; `warren template ls` lists them"),
    )
}

/// The last `max` bytes of `bytes`, as lossy UTF-8.
fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Why one setup command did not succeed.
struct SetupFailure {
    command: Option<String>,
    exit_code: Option<i32>,
    message: String,
}

impl SetupFailure {
    fn other(message: String) -> Self {
        Self {
            command: None,
            exit_code: None,
            message,
        }
    }
}

/// Where a build's events go; a vanished reader is not an error, and a slow
/// one loses output rather than stalling the build.
struct BuildEvents {
    tx: mpsc::Sender<TemplateBuildEvent>,
    /// Output was dropped and the notice saying so is not sent yet.
    notice_pending: AtomicBool,
    /// The notice was sent (only one per build).
    noticed: AtomicBool,
}

impl BuildEvents {
    fn new(tx: mpsc::Sender<TemplateBuildEvent>) -> Self {
        Self {
            tx,
            notice_pending: AtomicBool::new(false),
            noticed: AtomicBool::new(false),
        }
    }

    /// Sends a step or the outcome, waiting for room.
    async fn send(&self, event: TemplateBuildEvent) {
        if self.notice_pending.swap(false, Ordering::Relaxed) {
            let _ = self
                .tx
                .send(TemplateBuildEvent::Output {
                    stream: "stderr".to_owned(),
                    data: "[warren: some build output was dropped because the client \
                           reads too slowly]\n"
                        .to_owned(),
                })
                .await;
        }
        // The caller disconnected: the build goes on regardless.
        let _ = self.tx.send(event).await;
    }

    /// Sends output if there is room; otherwise drops it.
    fn output(&self, event: TemplateBuildEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            if !self.noticed.swap(true, Ordering::Relaxed) {
                self.notice_pending.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// The template builds in progress: cancelled and awaited at shutdown.
pub(crate) struct BuildState {
    /// Turns true at shutdown.
    cancel: watch::Sender<bool>,
    /// The build tasks (finished ones are pruned as new ones start).
    tasks: StdMutex<Vec<JoinHandle<()>>>,
}

impl Default for BuildState {
    fn default() -> Self {
        Self {
            cancel: watch::channel(false).0,
            tasks: StdMutex::new(Vec::new()),
        }
    }
}

impl BuildState {
    /// Tells every build (running or to come) to stop.
    pub(crate) fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    fn track(&self, task: JoinHandle<()>) {
        // Only short non-panicking blocks touch the list.
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Cancels the builds and waits (a bounded time) for them to delete
    /// their builders; those still running then are aborted (the next start
    /// cleans up after them).
    pub(crate) async fn stop(&self) {
        self.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + BUILD_STOP_GRACE;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a template build did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

/// Waits until `cancel` turns true.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    // The sender lives as long as the service: an error means it is gone,
    // which is a shutdown too.
    let _ = cancel.wait_for(|stop| *stop).await;
}

/// The builder sandbox's request for a recipe.
fn builder_request(recipe: &CreateTemplateRequest) -> CreateSandboxRequest {
    CreateSandboxRequest {
        image: recipe.image.clone(),
        name: Some(format!("template-build-{}", recipe.name)),
        resources: recipe.resources.clone(),
        env: recipe.env.clone(),
        workdir: recipe.workdir.clone(),
        network: recipe.network.clone(),
        ..CreateSandboxRequest::default()
    }
}

impl SandboxService {
    /// The stored template; 404 when there is none.
    pub(crate) async fn template_record(&self, name: &str) -> Result<TemplateRecord, ApiError> {
        self.store
            .get_template(name)
            .await?
            .ok_or_else(|| template_not_found(name))
    }

    /// The snapshot of the template's last ready build (kept while it is
    /// rebuilt and after a failed rebuild); 404 for an unknown template, 409
    /// naming its state when it never built.
    pub(crate) async fn ready_template(
        &self,
        name: &str,
    ) -> Result<(TemplateRecord, String), ApiError> {
        let record = self.template_record(name).await?;
        match (&record.state, &record.snapshot_id) {
            (_, Some(snapshot)) => {
                let snapshot = snapshot.clone();
                Ok((record, snapshot))
            }
            (TemplateState::Building, _) => Err(ApiError::invalid_state(format!(
                "template {name} is building; wait until it is ready"
            ))),
            (state, _) => Err(ApiError::invalid_state(format!(
                "template {name} is {}: {}",
                match state {
                    TemplateState::Failed => "failed",
                    _ => "not ready",
                },
                record
                    .failure_reason
                    .as_deref()
                    .unwrap_or("rebuild it with POST /v1/templates")
            ))),
        }
    }

    /// `POST /v1/sandboxes {template}` (optionally `fromPool`).
    pub(crate) async fn create_from_template(
        &self,
        mut req: CreateSandboxRequest,
    ) -> Result<Sandbox, ApiError> {
        let name = req.template.take().unwrap_or_default();
        if req.snapshot.is_some() {
            return Err(ApiError::invalid_value(
                "snapshot and template cannot both be given; a template names its snapshot",
            ));
        }
        // Queued pool members always come from the template's last ready
        // build (a finished rebuild empties the pool), so a claim needs no
        // look at the template.
        if req.from_pool.take() == Some(true) {
            if let Some(sandbox) = self.claim_from_pool(&name, &req).await? {
                return Ok(sandbox);
            }
        }
        let (_, snapshot) = self.ready_template(&name).await?;
        req.snapshot = Some(snapshot);
        let seed = Lifecycle {
            template: Some(name),
            ..Lifecycle::default()
        };
        self.create_sandbox(req, seed).await
    }

    /// Checks what the builder would be created from, before the build
    /// answers 200: 422 for a bad image, resources, env or workdir. Returns
    /// the digest of the recipe's image (`None`: the host image).
    pub(crate) fn check_recipe(
        &self,
        recipe: &CreateTemplateRequest,
    ) -> Result<Option<String>, ApiError> {
        let mut req = builder_request(recipe);
        let driver = self.driver_named(None)?;
        let digest = match req.image.as_deref() {
            Some(image) if image != warren_api::DEFAULT_IMAGE && !image.is_empty() => {
                let info = self.stored_image(image)?;
                apply_image_defaults(&mut req, &info);
                Some(info.digest)
            }
            _ => None,
        };
        validate_create(req, &driver.capacity())?;
        Ok(digest)
    }

    /// Starts the build of a checked recipe in its own task (tracked, so
    /// that shutdown cancels and awaits it).
    fn start_build(
        self: &Arc<Self>,
        recipe: CreateTemplateRequest,
        hash: String,
        events: BuildEvents,
    ) {
        let service = Arc::clone(self);
        let task = tokio::spawn(async move {
            service.build_template(recipe, hash, events).await;
        });
        self.lifecycle.builds.track(task);
    }

    /// Builds (or reuses) a template, sending events to `events`. Holds
    /// the template's lock throughout, so builds of one name take turns.
    async fn build_template(
        &self,
        recipe: CreateTemplateRequest,
        hash: String,
        events: BuildEvents,
    ) {
        let name = recipe.name.clone();
        let failed = |message: String| TemplateBuildEvent::Failed {
            command: None,
            exit_code: None,
            message,
        };
        let mut cancel = self.lifecycle.builds.cancelled();
        let lock_key = format!("template:{name}");
        let _guard = tokio::select! {
            guard = self.lock(&lock_key) => guard,
            () = cancelled(&mut cancel) => {
                events.send(failed("the daemon is shutting down; the build did not start".to_owned())).await;
                return;
            }
        };
        let previous = match self.store.get_template(&name).await {
            Ok(previous) => previous,
            Err(e) => {
                events
                    .send(failed(format!("reading template {name}: {e}")))
                    .await;
                return;
            }
        };
        if let Some(previous) = &previous {
            if previous.state == TemplateState::Ready
                && previous.recipe_hash == hash
                && previous.snapshot_id.is_some()
            {
                events
                    .send(TemplateBuildEvent::Reused {
                        template: previous.to_api(),
                    })
                    .await;
                return;
            }
        }
        let now = Utc::now().trunc_subsecs(6);
        let old_snapshot = previous.as_ref().and_then(|p| p.snapshot_id.clone());
        let mut record = TemplateRecord {
            name: name.clone(),
            recipe: recipe.clone(),
            recipe_hash: hash,
            state: TemplateState::Building,
            // The last ready build stays usable until the new one is ready.
            snapshot_id: old_snapshot.clone(),
            failure_reason: None,
            created_at: previous.as_ref().map_or(now, |p| p.created_at),
            updated_at: now,
        };
        if let Err(e) = self.store.put_template(&record).await {
            events
                .send(failed(format!("storing template {name}: {e}")))
                .await;
            return;
        }
        match self.run_build(&recipe, &events, &mut cancel).await {
            Ok(snapshot) => {
                record.state = TemplateState::Ready;
                record.snapshot_id = Some(snapshot.clone());
                record.updated_at = Utc::now().trunc_subsecs(6);
                if let Err(e) = self.store.put_template(&record).await {
                    tracing::warn!(template = %name, error = %e, "could not store the built template");
                    events
                        .send(failed(format!("storing template {name}: {e}")))
                        .await;
                    return;
                }
                tracing::info!(template = %name, snapshot = %snapshot, "template built");
                // Idle pool members hold the previous build's files.
                self.flush_pool(&name).await;
                if let Some(old) = old_snapshot.filter(|old| *old != snapshot) {
                    self.release_template_snapshot(&name, &old).await;
                }
                events
                    .send(TemplateBuildEvent::Done {
                        template: record.to_api(),
                    })
                    .await;
            }
            Err(failure) => {
                // The last ready snapshot (if any) stays in use.
                record.state = TemplateState::Failed;
                record.failure_reason = Some(failure.message.clone());
                record.updated_at = Utc::now().trunc_subsecs(6);
                if let Err(e) = self.store.put_template(&record).await {
                    tracing::warn!(template = %name, error = %e, "could not store the failed template");
                }
                tracing::info!(template = %name, reason = %failure.message, "template build failed");
                events
                    .send(TemplateBuildEvent::Failed {
                        command: failure.command,
                        exit_code: failure.exit_code,
                        message: failure.message,
                    })
                    .await;
            }
        }
    }

    /// After a restart, before serving: deletes the builders of builds cut
    /// short and marks their templates failed (a template's last ready
    /// snapshot stays usable).
    pub(crate) async fn recover_templates(&self) -> Result<(), ApiError> {
        for record in self.store.list_sandboxes().await? {
            if let Some(template) = &record.lifecycle.builder {
                tracing::info!(sandbox = %record.id, template = %template, "deleting the builder of an interrupted template build");
                if let Err(e) = self.delete(&record.id).await {
                    tracing::warn!(sandbox = %record.id, error = %e, "could not delete a template builder");
                }
            }
        }
        for mut template in self.store.list_templates().await? {
            if template.state == TemplateState::Building {
                template.state = TemplateState::Failed;
                template.failure_reason = Some(RESTARTED_REASON.to_owned());
                template.updated_at = Utc::now().trunc_subsecs(6);
                self.store.put_template(&template).await?;
                tracing::info!(template = %template.name, "template build interrupted by a restart marked failed");
            }
        }
        Ok(())
    }

    /// Deletes a template's former snapshot unless something still uses
    /// it; then it stays, and the answer says why.
    async fn release_template_snapshot(&self, name: &str, snapshot: &str) -> Option<String> {
        match self.delete_snapshot(snapshot).await {
            Ok(()) => None,
            Err(e) => {
                tracing::info!(template = %name, snapshot, error = %e, "template snapshot kept");
                Some(e.message)
            }
        }
    }

    /// Creates the builder, runs the setup, snapshots the result and
    /// deletes the builder whatever happened. Returns the snapshot id.
    async fn run_build(
        &self,
        recipe: &CreateTemplateRequest,
        events: &BuildEvents,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<String, SetupFailure> {
        let seed = Lifecycle {
            builder: Some(recipe.name.clone()),
            ..Lifecycle::default()
        };
        let builder = match self.create_sandbox(builder_request(recipe), seed).await {
            Ok(builder) => builder,
            Err(e) => {
                self.delete_failed_builders(&recipe.name).await;
                return Err(SetupFailure::other(format!(
                    "the builder sandbox could not be created: {}",
                    e.message
                )));
            }
        };
        let result = self.run_setup(&builder.id, recipe, events, cancel).await;
        let result = match result {
            Ok(()) => self
                .capture_snapshot(
                    &builder.id,
                    Some(recipe.name.clone()),
                    SnapshotKind::Template,
                )
                .await
                .map(|snapshot| snapshot.id)
                .map_err(|e| {
                    SetupFailure::other(format!(
                        "snapshotting the builder sandbox failed: {}",
                        e.message
                    ))
                }),
            Err(failure) => Err(failure),
        };
        if let Err(e) = self.delete(&builder.id).await {
            tracing::warn!(sandbox = %builder.id, error = %e, "could not delete a template builder");
        }
        result
    }

    /// A builder whose create failed is kept as `failed`; remove it (the
    /// builders of the template: builds of one template take turns).
    async fn delete_failed_builders(&self, template: &str) {
        let Ok(records) = self.store.list_sandboxes().await else {
            return;
        };
        for record in records
            .iter()
            .filter(|r| r.lifecycle.builder.as_deref() == Some(template))
        {
            if let Err(e) = self.delete(&record.id).await {
                tracing::warn!(sandbox = %record.id, error = %e, "could not delete a failed template builder");
            }
        }
    }

    /// Runs each setup command as root with `sh -c`, streaming its output,
    /// and stops at the first that fails, outlives its deadline or is
    /// cancelled by a shutdown.
    async fn run_setup(
        &self,
        builder: &str,
        recipe: &CreateTemplateRequest,
        events: &BuildEvents,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), SetupFailure> {
        let total = recipe.setup.len();
        for (index, command) in recipe.setup.iter().enumerate() {
            events
                .send(TemplateBuildEvent::Step {
                    index,
                    command: command.clone(),
                })
                .await;
            let failed = |exit_code: Option<i32>, message: String| SetupFailure {
                command: Some(command.clone()),
                exit_code,
                message,
            };
            let process = self
                .start_process(
                    builder,
                    StartProcessRequest {
                        shell: Some(command.clone()),
                        user: Some("root".to_owned()),
                        ..StartProcessRequest::default()
                    },
                )
                .await
                .map_err(|e| {
                    failed(
                        None,
                        format!(
                            "setup command {}/{total} {command:?} could not start: {}",
                            index + 1,
                            e.message
                        ),
                    )
                })?;
            let mut output = self
                .process_output(builder, process.pid, 0, true)
                .await
                .map_err(|e| {
                    failed(
                        None,
                        format!(
                            "reading the output of setup command {}/{total} {command:?}: {}",
                            index + 1,
                            e.message
                        ),
                    )
                })?;
            let mut seen: Vec<u8> = Vec::new();
            // Bytes of a character split across chunks, per stream.
            let (mut pending_out, mut pending_err) = (Vec::new(), Vec::new());
            let mut exit = None;
            let deadline = tokio::time::Instant::now() + SETUP_COMMAND_TIMEOUT;
            loop {
                let event = tokio::select! {
                    event = output.recv() => event,
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(failed(
                            None,
                            format!(
                                "setup command {}/{total} {command:?} did not finish within {} \
                                 seconds; output ends with: {}",
                                index + 1,
                                SETUP_COMMAND_TIMEOUT.as_secs(),
                                tail(&seen, OUTPUT_TAIL_BYTES)
                            ),
                        ));
                    }
                    () = cancelled(cancel) => {
                        return Err(failed(
                            None,
                            format!(
                                "the build was cancelled during setup command {}/{total} \
                                 {command:?}: the daemon is shutting down",
                                index + 1
                            ),
                        ));
                    }
                };
                let Some(event) = event else {
                    break;
                };
                match event {
                    ProcessEvent::Output { fd, data, .. } => {
                        seen.extend_from_slice(&data);
                        if seen.len() > 2 * OUTPUT_TAIL_BYTES {
                            seen.drain(..seen.len() - OUTPUT_TAIL_BYTES);
                        }
                        let (stream, pending) = if fd == 2 {
                            ("stderr", &mut pending_err)
                        } else {
                            ("stdout", &mut pending_out)
                        };
                        let text = take_text(pending, &data);
                        if !text.is_empty() {
                            events.output(TemplateBuildEvent::Output {
                                stream: stream.to_owned(),
                                data: text,
                            });
                        }
                    }
                    ProcessEvent::Exited {
                        exit_code,
                        timed_out,
                    } => {
                        // A character cut off at the end is shown as is.
                        for (stream, pending) in
                            [("stdout", &pending_out), ("stderr", &pending_err)]
                        {
                            if !pending.is_empty() {
                                events.output(TemplateBuildEvent::Output {
                                    stream: stream.to_owned(),
                                    data: String::from_utf8_lossy(pending).into_owned(),
                                });
                            }
                        }
                        exit = Some((exit_code, timed_out));
                        break;
                    }
                    ProcessEvent::Dropped { .. } | ProcessEvent::End { .. } => {}
                }
            }
            match exit {
                Some((0, _)) => {}
                Some((code, timed_out)) => {
                    let output_tail = tail(&seen, OUTPUT_TAIL_BYTES);
                    return Err(failed(
                        Some(code),
                        format!(
                            "setup command {}/{total} {command:?} {} {code}; output ends with: {}",
                            index + 1,
                            if timed_out {
                                "timed out with exit code"
                            } else {
                                "exited with code"
                            },
                            if output_tail.trim().is_empty() {
                                "(no output)".to_owned()
                            } else {
                                output_tail
                            }
                        ),
                    ));
                }
                None => {
                    return Err(failed(
                        None,
                        format!(
                            "setup command {}/{total} {command:?}: its output stream ended \
                             before it exited (is the builder sandbox gone?)",
                            index + 1
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Deletes a template: refused (409) while a pool exists for it. Its
    /// snapshot goes too unless sandboxes still use it.
    pub(crate) async fn delete_template(&self, name: &str) -> Result<TemplateRemoved, ApiError> {
        let refuse_building = |record: &TemplateRecord| {
            if record.state == TemplateState::Building {
                Err(ApiError::invalid_state(format!(
                    "template {name} is building; delete it once the build has ended"
                )))
            } else {
                Ok(())
            }
        };
        // A build holds the lock until it ends: answer at once instead.
        refuse_building(&self.template_record(name).await?)?;
        let _guard = self.lock(&format!("template:{name}")).await;
        let record = self.template_record(name).await?;
        refuse_building(&record)?;
        if self.store.get_pool(name).await?.is_some() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("template {name} has a warm pool; remove it first (warren pool rm {name})"),
            ));
        }
        self.store.delete_template(name).await?;
        let mut removed = TemplateRemoved {
            name: name.to_owned(),
            snapshot: record.snapshot_id.clone(),
            snapshot_deleted: false,
            snapshot_kept_because: None,
        };
        if let Some(snapshot) = &record.snapshot_id {
            match self.release_template_snapshot(name, snapshot).await {
                None => removed.snapshot_deleted = true,
                Some(reason) => removed.snapshot_kept_because = Some(reason),
            }
        }
        Ok(removed)
    }
}

/// Build (or reuse) a template; the answer is an NDJSON stream of
/// `TemplateBuildEvent` lines ending with `reused`, `done` or `failed`.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    request_body = CreateTemplateRequest,
    responses(
        (status = 200, description = "NDJSON stream of TemplateBuildEvent lines (step, output, then reused, done or failed)", body = TemplateBuildEvent, content_type = "application/x-ndjson"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "Invalid name, setup, image, resources, env or workdir", body = ErrorBody),
    )
)]
pub async fn create_template(
    State(state): State<AppState>,
    ApiJson(recipe): ApiJson<CreateTemplateRequest>,
) -> Result<Response, ApiError> {
    validate_recipe(&recipe)?;
    let digest = state.service.check_recipe(&recipe)?;
    let hash = recipe_hash(&recipe, digest.as_deref());
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    state
        .service
        .start_build(recipe, hash, BuildEvents::new(tx));
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_owned());
        line.push('\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// List templates by name.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    responses((status = 200, description = "Templates by name", body = TemplateList))
)]
pub async fn list_templates(State(state): State<AppState>) -> Result<Json<TemplateList>, ApiError> {
    let templates = state
        .service
        .store
        .list_templates()
        .await?
        .iter()
        .map(TemplateRecord::to_api)
        .collect();
    Ok(Json(TemplateList { templates }))
}

/// Get one template.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 404, description = "No such template", body = ErrorBody),
    )
)]
pub async fn get_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(state.service.template_record(&name).await?.to_api()))
}

/// Delete a template and, unless sandboxes still use it, its snapshot.
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "Deleted; says whether its snapshot was deleted or kept for the sandboxes using it", body = TemplateRemoved),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "A warm pool exists for it (conflict) or it is building (invalid_state)", body = ErrorBody),
    )
)]
pub async fn delete_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TemplateRemoved>, ApiError> {
    Ok(Json(state.service.delete_template(&name).await?))
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/v1/templates", post(create_template).get(list_templates))
        .route(
            "/v1/templates/{name}",
            get(get_template).delete(delete_template),
        )
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_template, list_templates, get_template, delete_template),
    components(schemas(
        CreateTemplateRequest,
        Template,
        TemplateState,
        TemplateList,
        TemplateBuildEvent,
        TemplateRemoved,
    )),
    tags((name = "templates", description = "Templates: a recipe built once (NDJSON progress) into a snapshot sandboxes start from"))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns_label("py-311"));
        assert!(!is_dns_label("Py"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
    }

    #[test]
    fn the_hash_changes_with_the_recipe_only() {
        let recipe = CreateTemplateRequest {
            name: "t".into(),
            setup: vec!["echo hi".into()],
            ..CreateTemplateRequest::default()
        };
        assert_eq!(
            recipe_hash(&recipe, None),
            recipe_hash(&recipe.clone(), None)
        );
        assert_eq!(recipe_hash(&recipe, None).len(), 64);
        let changed = CreateTemplateRequest {
            setup: vec!["echo ho".into()],
            ..recipe.clone()
        };
        assert_ne!(recipe_hash(&recipe, None), recipe_hash(&changed, None));
    }

    #[test]
    fn the_hash_includes_the_image_digest() {
        let recipe = CreateTemplateRequest {
            name: "t".into(),
            image: Some("alpine".into()),
            ..CreateTemplateRequest::default()
        };
        assert_ne!(
            recipe_hash(&recipe, Some("sha256:aaa")),
            recipe_hash(&recipe, Some("sha256:bbb")),
            "a re-pulled image is a new recipe"
        );
    }

    #[test]
    fn equivalent_recipes_hash_the_same() {
        let plain = CreateTemplateRequest {
            name: "t".into(),
            setup: vec!["true".into()],
            ..CreateTemplateRequest::default()
        };
        let spelled_out = CreateTemplateRequest {
            env: Some(Default::default()),
            image: Some(warren_api::DEFAULT_IMAGE.to_owned()),
            resources: Some(warren_api::Resources::default()),
            ..plain.clone()
        };
        assert_eq!(recipe_hash(&plain, None), recipe_hash(&spelled_out, None));
        let with_env = CreateTemplateRequest {
            env: Some([("A".to_owned(), "1".to_owned())].into_iter().collect()),
            ..plain.clone()
        };
        assert_ne!(recipe_hash(&plain, None), recipe_hash(&with_env, None));
    }

    #[test]
    fn a_builder_network_changes_the_hash_and_its_absence_does_not() {
        let plain = CreateTemplateRequest {
            name: "t".into(),
            setup: vec!["true".into()],
            ..CreateTemplateRequest::default()
        };
        // The hash of a recipe without a network is what it was before
        // recipes could have one (templates built then are not rebuilt).
        assert_eq!(
            recipe_hash(&plain, None),
            hex::encode(Sha256::digest(br#"[{"name":"t","setup":["true"]},null]"#))
        );
        let with_network = CreateTemplateRequest {
            network: Some(warren_api::NetworkPolicy {
                mode: Some(warren_api::NetworkMode::Allowlist),
                allow_out: vec!["example.com".into()],
                deny_out: Vec::new(),
            }),
            ..plain.clone()
        };
        assert_ne!(recipe_hash(&plain, None), recipe_hash(&with_network, None));
        let request = builder_request(&with_network);
        assert_eq!(request.network, with_network.network);
    }

    #[test]
    fn characters_split_across_chunks_are_joined() {
        let text = "héllo €𝄞";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut pending = Vec::new();
            let mut out = take_text(&mut pending, &bytes[..cut]);
            out.push_str(&take_text(&mut pending, &bytes[cut..]));
            assert_eq!(out, text, "cut at {cut}");
            assert!(pending.is_empty());
        }
        let mut pending = Vec::new();
        assert_eq!(
            take_text(&mut pending, b"a\xff"),
            "a\u{fffd}",
            "invalid bytes are not held"
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn recipes_are_validated_naming_the_field() {
        let ok = CreateTemplateRequest {
            name: "t".into(),
            setup: vec!["true".into()],
            ..CreateTemplateRequest::default()
        };
        assert!(validate_recipe(&ok).is_ok());
        let empty = CreateTemplateRequest {
            setup: vec!["true".into(), " ".into()],
            ..ok.clone()
        };
        assert!(validate_recipe(&empty)
            .unwrap_err()
            .message
            .contains("setup[1]"));
        let many = CreateTemplateRequest {
            setup: vec!["true".into(); 101],
            ..ok.clone()
        };
        assert!(validate_recipe(&many)
            .unwrap_err()
            .message
            .contains("setup"));
        let bad_name = CreateTemplateRequest {
            name: "Bad_Name".into(),
            ..ok
        };
        assert!(validate_recipe(&bad_name)
            .unwrap_err()
            .message
            .contains("name"));
    }
}
