//! Public REST types of the Warren API.
//!
//! Every type here is serialized as JSON with camelCase field names and is part
//! of the OpenAPI document served at `GET /openapi.json`. This crate does no I/O.

mod access;
mod error;
mod exec;
mod files;
mod images;
mod lifecycle;
mod network;
mod ports;
mod process;
mod sandbox;

pub use access::{
    ApiKeyScope, CreateSecretRequest, CreateTokenRequest, SandboxToken, SecretInfo, SecretList,
    TokenScope, DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS,
};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use exec::{ExecRequest, ExecResult};
pub use files::{
    ChangeKind, ChangeList, FileChange, FileExists, FileKind, FileList, FileStat, FindResult,
    GrepMatch, GrepResult, MkdirRequest, MoveRequest, TarUploadResult, WatchEvent, WatchEventKind,
    DEFAULT_SEARCH_LIMIT, MAX_LIST_DEPTH, MAX_PATH_BYTES, MAX_SEARCH_LIMIT,
};
pub use images::{
    Image, ImageConfig, ImageLayer, ImageList, ImageRemoved, PullImageRequest, PullProgress,
    PullProgressKind,
};
pub use lifecycle::{
    CreatePoolRequest, CreateSnapshotRequest, CreateTemplateRequest, ForkRequest, ForkResult,
    OnTimeout, Pool, PoolList, SandboxEvent, SandboxEventList, Snapshot, SnapshotKind,
    SnapshotList, Template, TemplateBuildEvent, TemplateList, TemplateRemoved, TemplateState,
    UpdateSandboxRequest, MAX_FORK_COUNT,
};
pub use network::{NetworkInfo, NetworkMode, NetworkPolicy};
pub use ports::{ExposedPort, ListeningPort, PortList, PortVisibility, SetPortsRequest};
pub use process::{
    AttachControl, AttachEvent, DroppedEventData, ExitEventData, OutputEventData, Process,
    ProcessList, PtySize, SignalRequest, StartProcessRequest, StdinRequest, SIGNAL_NAMES,
};
pub use sandbox::{
    CreateSandboxRequest, Health, ResolvedResources, Resources, Sandbox, SandboxList, SandboxState,
    DEFAULT_CPUS, DEFAULT_IMAGE, DEFAULT_MEMORY_MB, DEFAULT_PIDS_LIMIT, DEFAULT_WORKDIR,
};
