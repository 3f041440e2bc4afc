//! The OpenAPI document, generated from the handlers and `warren-api` types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{files, images, routes};

/// Adds the bearer scheme used on the TCP listener.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`wrn_…`) from `warren key create`; required on TCP, \
                         not on the local unix socket.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren",
        description = "Self-hosted sandboxes for AI agents.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        routes::create_sandbox,
        routes::list_sandboxes,
        routes::get_sandbox,
        routes::delete_sandbox,
        routes::pause_sandbox,
        routes::resume_sandbox,
        routes::exec_in_sandbox,
        routes::start_process,
        routes::list_processes,
        routes::get_process,
        routes::process_output,
        routes::process_stdin,
        routes::signal_process,
        routes::resize_process,
        routes::attach_process,
        images::list_images,
        images::get_image,
        images::delete_image,
        images::import_image,
        images::pull_image,
        files::download_file,
        files::upload_file,
        files::remove_file,
        files::stat_file,
        files::file_exists,
        files::list_files,
        files::make_dir,
        files::move_file,
        files::find_files,
        files::grep_files,
        files::download_tar,
        files::upload_tar,
        files::watch_files,
        files::list_changes,
        routes::healthz,
        routes::openapi_json,
    ),
    components(schemas(
        warren_api::CreateSandboxRequest,
        warren_api::Resources,
        warren_api::ResolvedResources,
        warren_api::Sandbox,
        warren_api::SandboxState,
        warren_api::SandboxList,
        warren_api::ExecRequest,
        warren_api::ExecResult,
        warren_api::StartProcessRequest,
        warren_api::Process,
        warren_api::ProcessList,
        warren_api::StdinRequest,
        warren_api::SignalRequest,
        warren_api::PtySize,
        warren_api::AttachControl,
        warren_api::AttachEvent,
        warren_api::OutputEventData,
        warren_api::DroppedEventData,
        warren_api::ExitEventData,
        warren_api::ErrorBody,
        warren_api::ErrorDetail,
        warren_api::Health,
        warren_api::Image,
        warren_api::ImageConfig,
        warren_api::ImageLayer,
        warren_api::ImageList,
        warren_api::ImageRemoved,
        warren_api::PullImageRequest,
        warren_api::PullProgress,
        warren_api::PullProgressKind,
        warren_api::FileKind,
        warren_api::FileStat,
        warren_api::FileExists,
        warren_api::FileList,
        warren_api::MkdirRequest,
        warren_api::MoveRequest,
        warren_api::FindResult,
        warren_api::GrepMatch,
        warren_api::GrepResult,
        warren_api::TarUploadResult,
        warren_api::WatchEvent,
        warren_api::WatchEventKind,
        warren_api::ChangeKind,
        warren_api::FileChange,
        warren_api::ChangeList,
    )),
    modifiers(&BearerAuth),
    security(("apiKey" = [])),
    tags(
        (name = "sandboxes", description = "Create, list, run commands in and delete sandboxes"),
        (name = "processes", description = "Background processes: start, list, stream output (SSE), stdin, signals"),
        (name = "images", description = "OCI images: list, inspect, remove, import archives, pull from registries (SSE progress)"),
        (name = "files", description = "Files inside a sandbox: read, write (streamed), list, search, tar, watch (SSE), changes"),
        (name = "daemon", description = "Health and API description"),
    )
)]
struct WarrenApi;

/// The OpenAPI document served at `GET /openapi.json` and committed as `docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = WarrenApi::openapi();
    doc.merge(crate::snapshots::ApiDoc::openapi());
    doc.merge(crate::lifetimes::ApiDoc::openapi());
    doc.merge(crate::templates::ApiDoc::openapi());
    doc.merge(crate::pools::ApiDoc::openapi());
    doc.merge(crate::network::ApiDoc::openapi());
    doc.merge(crate::ports::ApiDoc::openapi());
    doc.merge(crate::access::ApiDoc::openapi());
    doc
}
