//! Command-line arguments (clap derive) and their mapping onto API requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use warren_client::{
    Client, CreateSandboxRequest, ExecRequest, Resources, SandboxState, DEFAULT_SOCKET_PATH,
};

/// Default data directory (database, logs, sandbox files).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";

/// Warren: sandboxes for AI agents on your own Linux host.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Unix socket of the daemon (default /run/warren/warren.sock).
    #[arg(long, global = true, env = "WARREN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Daemon URL, `http://host:port` or `unix:/path`; takes precedence over --socket.
    #[arg(long, global = true, env = "WARREN_URL", value_name = "URL")]
    pub url: Option<String>,
    /// API key for a TCP daemon.
    #[arg(
        long,
        global = true,
        env = "WARREN_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Data directory (database, logs, sandboxes).
    #[arg(long, global = true, env = "WARREN_HOME", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never start a daemon automatically when none is running.
    #[arg(long, global = true, env = "WARREN_NO_AUTOSTART")]
    pub no_autostart: bool,
}

impl GlobalArgs {
    /// The socket a local daemon listens on (and `warren serve` binds).
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH))
    }

    /// The client these options describe: `--url` if given, else the socket.
    pub fn client(&self) -> anyhow::Result<Client> {
        let api_key = self.api_key.clone().filter(|k| !k.is_empty());
        match self.url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Ok(Client::from_url(url, api_key)?),
            None => Ok(Client::unix(self.socket_path()).with_api_key(api_key)),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Warren daemon in the foreground.
    Serve(ServeArgs),
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// List sandboxes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show everything about one sandbox, as JSON.
    Inspect {
        /// Sandbox id.
        id: String,
    },
    /// Run a command in a sandbox; exits with the command's exit code
    /// (with -d: start it in the background and print its pid).
    Exec(ExecArgs),
    /// Open an interactive login shell (or run CMD) in a sandbox under a
    /// pseudo-terminal; exits with its exit code.
    Shell {
        /// Run as this user instead of the sandbox's default.
        #[arg(long, short = 'u', value_name = "NAME")]
        user: Option<String>,
        /// Sandbox id.
        id: String,
        /// The command and its arguments (after `--`); default: a login shell.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// List a sandbox's processes (running and recently finished).
    Ps {
        /// Sandbox id.
        id: String,
    },
    /// Print a process's output (stdout to stdout, stderr to stderr).
    Logs {
        /// Sandbox id.
        id: String,
        /// Process id (from `exec -d` or `ps`).
        pid: i32,
        /// Keep printing until the process exits, then exit with its code.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Send a signal to a process (and its process group).
    Kill {
        /// Sandbox id.
        id: String,
        /// Process id.
        pid: i32,
        /// Signal name: SIGTERM (default), SIGINT, SIGKILL, SIGHUP, SIGQUIT,
        /// SIGUSR1, SIGUSR2, SIGCONT, SIGSTOP.
        #[arg(long, short = 's', default_value = "SIGTERM", value_name = "NAME")]
        signal: String,
    },
    /// Pause a running sandbox: freeze its processes in memory until it is
    /// resumed.
    Pause {
        /// Sandbox id.
        id: String,
    },
    /// Resume a paused sandbox where it stopped.
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// Suspend a sandbox to disk: its processes stop and its memory is
    /// freed; `warren resume` starts it again.
    Suspend {
        /// Sandbox id.
        id: String,
    },
    /// Change a sandbox's timeouts, timeout action or auto-resume.
    Update(crate::lifecycle_commands::UpdateArgs),
    /// Print a sandbox's events (state changes, timeouts…).
    Events {
        /// Sandbox id.
        id: String,
        /// Keep printing new events until the sandbox is deleted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Delete sandboxes.
    #[command(alias = "delete")]
    Rm {
        /// Sandbox ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Create a sandbox, run one command in it, delete it.
    Run(RunArgs),
    /// Manage API keys (works on the data directory; no daemon needed).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage images: pull from a registry, import an archive, list, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Copy files and directories between this host and a sandbox
    /// (`ID:/path` names a path in a sandbox; `-` is stdin or stdout).
    Cp(CpArgs),
    /// Work with the files of a sandbox: ls, cat, stat, rm, mkdir, mv,
    /// find, grep, watch.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Show what a sandbox changed relative to its image (A added,
    /// M modified, D deleted).
    Diff(DiffArgs),
    /// Capture a sandbox's files as a snapshot (it is frozen during the
    /// copy); prints the snapshot id.
    Snapshot {
        /// Sandbox id.
        id: String,
        /// A human name for the snapshot.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List or remove snapshots.
    #[command(subcommand)]
    Snapshots(crate::snapshot_commands::SnapshotsCommand),
    /// Fork a running or paused sandbox into new sandboxes that share its
    /// files; prints their ids.
    Fork {
        /// Sandbox id.
        id: String,
        /// How many copies (1..=100).
        #[arg(short = 'n', long = "count", default_value_t = 1, value_name = "N")]
        count: i64,
        /// Copy the processes' memory too (drivers that checkpoint, e.g. gvisor).
        #[arg(long)]
        memory: bool,
    },
    /// Manage templates: environments built once from setup commands.
    #[command(subcommand)]
    Template(crate::template_commands::TemplateCommand),
    /// Manage warm pools: ready sandboxes of a template.
    #[command(subcommand)]
    Pool(crate::template_commands::PoolCommand),
    /// Show or change a sandbox's egress policy.
    Network(crate::network_commands::NetworkArgs),
    /// List what listens in a sandbox and what it exposes; change exposure.
    Ports(crate::port_commands::PortsArgs),
    /// Forward a local TCP port to a port in a sandbox (like kubectl
    /// port-forward).
    PortForward(crate::port_commands::PortForwardArgs),
    /// Mint a short-lived token for one sandbox.
    Token(crate::access_commands::TokenArgs),
    /// Manage secrets injected into sandboxes' environments.
    #[command(subcommand)]
    Secret(crate::access_commands::SecretCommand),
}

/// `warren serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Also listen on TCP at this address (API keys required there), e.g. 127.0.0.1:7070.
    #[arg(long, env = "WARREN_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Name of the parent cgroup that holds every sandbox's cgroup.
    #[arg(
        long,
        env = "WARREN_CGROUP_PARENT",
        value_name = "NAME",
        default_value = "warren"
    )]
    pub cgroup_parent: String,
    /// Leave the host's cgroup2 mount options alone. By default the daemon
    /// remounts cgroup2 with `favordynmods` (as systemd 254+ does), which
    /// makes creating a sandbox ~15 ms faster on this kind of host.
    #[arg(long, env = "WARREN_KEEP_CGROUP_OPTIONS")]
    pub keep_cgroup_options: bool,
    /// Give every sandbox created without `diskMb` its own disk of this many
    /// MiB (writes beyond it fail with ENOSPC inside). Costs ~30 ms per create
    /// on hosts without filesystem quotas. Default: unbounded.
    #[arg(long, env = "WARREN_DEFAULT_DISK_MB", value_name = "MIB", value_parser = clap::value_parser!(u64).range(32..))]
    pub default_disk_mb: Option<u64>,
    /// Largest file or tar upload through the file API, in MiB; larger
    /// uploads get 413 and leave no partial file.
    #[arg(long, env = "WARREN_MAX_UPLOAD_MB", value_name = "MIB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_mb: u64,
    #[command(flatten)]
    pub network: crate::network_commands::NetworkServeArgs,
    #[command(flatten)]
    pub ports: crate::port_commands::PortServeArgs,
    #[command(flatten)]
    pub access: crate::access_commands::AccessServeArgs,
}

/// What a new sandbox looks like (`create` and `run`).
#[derive(Debug, Clone, Default, Args)]
pub struct CreateOptions {
    /// Image to start from (default `host`: a read-only view of this host).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// A human name for the sandbox.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// CPU quota in cores (fractions allowed).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Disk space for the sandbox's files in MiB (writes beyond it fail with ENOSPC).
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u64>,
    /// Environment variable for every command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Default working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Label, usable as a filter in `ls` (repeatable).
    #[arg(long = "label", short = 'l', value_name = "K=V", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// User commands run as by default: `root`, or an unprivileged user
    /// (created in the sandbox if the image lacks it).
    #[arg(long, short = 'u', value_name = "NAME")]
    pub user: Option<String>,
    /// Isolation driver: `namespace` (default) or `gvisor`.
    #[arg(long, value_name = "NAME")]
    pub driver: Option<String>,
    /// Start from this snapshot's files (`snap_…`).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Start from this template.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// With --template: claim a ready sandbox from the template's warm pool.
    #[arg(long, requires = "template")]
    pub from_pool: bool,
    #[command(flatten)]
    pub network: crate::network_commands::NetworkCreateOptions,
    #[command(flatten)]
    pub access: crate::access_commands::AccessCreateOptions,
}

/// `warren create`: what the sandbox looks like and how long it lives.
#[derive(Debug, Clone, Default, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub options: CreateOptions,
    #[command(flatten)]
    pub lifetime: LifetimeOptions,
}

impl CreateArgs {
    /// The API request: the options' plus the lifetime settings.
    pub fn to_request(&self) -> anyhow::Result<CreateSandboxRequest> {
        let mut req = self.options.to_request()?;
        let l = &self.lifetime;
        req.timeout_secs = l.timeout_secs.map(|t| to_i64(t, "--timeout")).transpose()?;
        req.idle_timeout_secs = l
            .idle_timeout_secs
            .map(|t| to_i64(t, "--idle-timeout"))
            .transpose()?;
        req.on_timeout = l.on_timeout;
        req.auto_resume = l.auto_resume.then_some(true);
        Ok(req)
    }
}

/// A sandbox's lifetime (`create` only: `run` deletes its sandbox itself,
/// and its `--timeout` bounds the command).
#[derive(Debug, Clone, Default, Args)]
pub struct LifetimeOptions {
    /// Seconds until the sandbox times out (extend with `warren update ID --timeout S`).
    #[arg(long = "timeout", value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    /// Seconds without exec, file or port activity until it times out.
    #[arg(long = "idle-timeout", value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// What a timeout does: delete (default), pause or suspend.
    #[arg(long, value_name = "ACTION", value_parser = parse_on_timeout)]
    pub on_timeout: Option<warren_api::OnTimeout>,
    /// Resume a paused or suspended sandbox on its next request.
    #[arg(long)]
    pub auto_resume: bool,
}

/// Parses `delete`, `pause` or `suspend`.
pub fn parse_on_timeout(s: &str) -> Result<warren_api::OnTimeout, String> {
    match s {
        "delete" => Ok(warren_api::OnTimeout::Delete),
        "pause" => Ok(warren_api::OnTimeout::Pause),
        "suspend" => Ok(warren_api::OnTimeout::Suspend),
        other => Err(format!("{other:?} is not one of delete, pause, suspend")),
    }
}

impl CreateOptions {
    /// The API request these options describe; unset options stay unset so
    /// the daemon applies its defaults.
    pub fn to_request(&self) -> anyhow::Result<CreateSandboxRequest> {
        let resources = Resources {
            cpus: self.cpus,
            memory_mb: self.memory.map(|m| to_i64(m, "--memory")).transpose()?,
            pids_limit: self.pids.map(|p| to_i64(p, "--pids")).transpose()?,
            disk_mb: self.disk.map(|d| to_i64(d, "--disk")).transpose()?,
        };
        let has_resources = resources != Resources::default();
        Ok(CreateSandboxRequest {
            image: self.image.clone(),
            name: self.name.clone(),
            resources: has_resources.then_some(resources),
            env: to_map(&self.env),
            workdir: self.workdir.clone(),
            metadata: to_map(&self.labels),
            user: self.user.clone(),
            driver: self.driver.clone(),
            snapshot: self.snapshot.clone(),
            template: self.template.clone(),
            from_pool: self.from_pool.then_some(true),
            network: self.network.to_policy(),
            secrets: self.access.secrets(),
            ..Default::default()
        })
    }
}

/// `warren ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sandboxes in this state (creating, running, paused, suspended, stopped, failed).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<SandboxState>,
    /// Only sandboxes with this label (repeatable; all must match).
    #[arg(long = "label", short = 'l', value_name = "K=V", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
}

/// How to run one command (`exec`).
#[derive(Debug, Clone, Default, Args)]
pub struct ExecOptions {
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Extra environment variable for this command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// Send this program's standard input to the command.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Run as this user instead of the sandbox's default.
    #[arg(long, short = 'u', value_name = "NAME")]
    pub user: Option<String>,
}

/// `warren exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub options: ExecOptions,
    /// Start the command in the background and print its pid.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// With -d: a label shown by `warren ps`.
    #[arg(long, value_name = "TAG", requires = "detach")]
    pub tag: Option<String>,
    /// Run under a pseudo-terminal of this terminal's size, with the local
    /// terminal in raw mode (like `warren shell ID -- CMD`).
    #[arg(long, short = 't', conflicts_with = "detach")]
    pub tty: bool,
    /// Sandbox id.
    pub id: String,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `warren run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateOptions,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// Send this program's standard input to the command.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Keep the sandbox instead of deleting it afterwards (its id goes to stderr).
    #[arg(long)]
    pub keep: bool,
    /// The command and its arguments (after `--`); without one, the image's
    /// own command (its Entrypoint and Cmd).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// Builds an exec request; `stdin` is the text to feed the command, if any.
pub fn exec_request(
    command: &[String],
    cwd: Option<String>,
    env: &[(String, String)],
    timeout_secs: Option<f64>,
    stdin: Option<String>,
) -> ExecRequest {
    ExecRequest {
        // No command: the daemon runs the image's default command.
        cmd: (!command.is_empty()).then(|| command.to_vec()),
        shell: None,
        cwd,
        env: to_map(env),
        stdin,
        // Validated positive and finite by `parse_timeout`; rounds up so that
        // a tiny timeout never becomes "no timeout".
        timeout_ms: timeout_secs.map(|s| (s * 1000.0).ceil() as u64),
        user: None,
    }
}

/// `warren keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print its secret (shown only once).
    Create {
        /// A unique name for the key.
        name: String,
        /// What the key may do: admin, sandboxes:write or sandboxes:read
        /// (repeatable; default admin).
        #[arg(long = "scope", value_name = "SCOPE", value_parser = crate::keys::parse_key_scope)]
        scopes: Vec<warren_api::ApiKeyScope>,
    },
    /// List API keys (never their secrets).
    #[command(alias = "list")]
    Ls,
    /// Delete an API key by id or name.
    #[command(alias = "delete")]
    Rm {
        /// Key id (`key_…`) or name.
        #[arg(value_name = "ID|NAME")]
        key: String,
    },
}

/// `warren image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry, e.g. `docker.io/library/alpine:3.20`
    /// or `127.0.0.1:5000/tools/busybox` (plain HTTP is allowed for
    /// localhost; elsewhere it needs --insecure).
    Pull {
        /// Image reference: `[registry/]repository[:tag|@sha256:…]`.
        #[arg(value_name = "REF")]
        reference: String,
        /// Allow plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
        /// Registry user name.
        #[arg(long, short = 'u', value_name = "USER")]
        username: Option<String>,
        /// Read the registry password (or token) from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Import an image archive: an OCI layout or `docker save` tarball
    /// (optionally gzipped), or a plain root file system tarball.
    Import {
        /// The archive (`-` for standard input).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Name to store it under, NAME[:TAG] (`:latest` when no tag).
        #[arg(long, value_name = "NAME:TAG")]
        name: String,
    },
    /// List images (the built-in `host` image first).
    #[command(alias = "list")]
    Ls,
    /// Show everything about one image, as JSON.
    Inspect {
        /// Image name or digest.
        name: String,
    },
    /// Remove an image and the layers no other image uses.
    #[command(alias = "delete")]
    Rm {
        /// Image name or digest.
        name: String,
    },
}

/// `warren cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a local path, `ID:/path` in a sandbox, or `-` (stdin, the
    /// content of one file).
    #[arg(value_name = "SRC", allow_hyphen_values = true)]
    pub src: String,
    /// Destination: a local path, `ID:/path` in a sandbox, or `-` (stdout;
    /// a directory comes out as a tar stream).
    #[arg(value_name = "DST", allow_hyphen_values = true)]
    pub dst: String,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `warren files …`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List a directory.
    Ls {
        /// List everything below (up to 32 levels).
        #[arg(long, short = 'R', conflicts_with = "depth")]
        recursive: bool,
        /// Levels to descend (1: the directory's children).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32))]
        depth: Option<u32>,
        /// Sandbox id.
        id: String,
        /// Absolute path of the directory.
        path: String,
    },
    /// Print a file to stdout.
    Cat {
        /// Sandbox id.
        id: String,
        /// Absolute path of the file.
        path: String,
    },
    /// Show a file's metadata.
    Stat {
        /// Sandbox id.
        id: String,
        /// Absolute path.
        path: String,
    },
    /// Remove a file, or with -r a directory tree.
    Rm {
        /// Remove directories and their contents.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Sandbox id.
        id: String,
        /// Absolute path.
        path: String,
    },
    /// Create a directory and its missing parents.
    Mkdir {
        /// Permission bits in octal (default 0755).
        #[arg(long, short = 'm', value_name = "MODE", value_parser = parse_octal_mode)]
        mode: Option<u32>,
        /// Sandbox id.
        id: String,
        /// Absolute path of the directory.
        path: String,
    },
    /// Move (rename) a file or directory.
    Mv {
        /// Replace an existing target.
        #[arg(long, short = 'f')]
        force: bool,
        /// Sandbox id.
        id: String,
        /// Absolute path of the entry.
        from: String,
        /// Absolute path it gets.
        to: String,
    },
    /// Find entries whose path (relative to ROOT) matches a glob.
    Find {
        /// At most this many results (default 1000, at most 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Sandbox id.
        id: String,
        /// Directory to search.
        root: String,
        /// Glob, like `**/*.rs`.
        glob: String,
    },
    /// Search file contents with a regular expression.
    Grep {
        /// Case-insensitive.
        #[arg(long, short = 'i')]
        ignore_case: bool,
        /// Only files whose name matches this glob.
        #[arg(long, value_name = "GLOB")]
        glob: Option<String>,
        /// At most this many matches (default 1000, at most 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Sandbox id.
        id: String,
        /// Directory (or file) to search.
        root: String,
        /// Regular expression.
        pattern: String,
    },
    /// Print changes under a path as they happen (one line each).
    Watch {
        /// Watch subdirectories too.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Sandbox id.
        id: String,
        /// Absolute path to watch.
        path: String,
    },
}

/// `warren diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Write the changes as a tar (OCI layer form) to FILE (`-`: stdout)
    /// instead of listing them.
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    pub tar: Option<PathBuf>,
    /// Sandbox id.
    pub id: String,
}

/// Parses permission bits written in octal (`755`, `0755`).
fn parse_octal_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text.strip_prefix("0o").unwrap_or(text), 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "expected octal permission bits like 0755, got {text:?}"
        )),
    }
}

/// Parses `KEY=VALUE`; the value may be empty and may contain `=`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        Some(_) => Err(format!(
            "expected KEY=VALUE, but the key is empty in {text:?}"
        )),
        None => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn parse_state(text: &str) -> Result<SandboxState, String> {
    SandboxState::parse(&text.to_ascii_lowercase()).ok_or_else(|| {
        format!(
            "unknown state {text:?}; expected one of creating, running, paused, suspended, stopped, failed"
        )
    })
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Ok(secs),
        _ => Err(format!(
            "expected a positive number of seconds, got {text:?}"
        )),
    }
}

fn to_map(pairs: &[(String, String)]) -> Option<BTreeMap<String, String>> {
    // Later occurrences of a key win, as with shell assignments.
    (!pairs.is_empty()).then(|| pairs.iter().cloned().collect())
}

fn to_i64(value: u64, flag: &str) -> anyhow::Result<i64> {
    i64::try_from(value).with_context(|| format!("{flag} {value} is too large"))
}

/// Reads all of standard input as text, for `--interactive`.
pub fn read_stdin() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read standard input")?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => bail!("standard input is not UTF-8 text; binary stdin is not supported yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?} should parse: {e}"))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_parsing() {
        assert_eq!(parse_key_value("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_key_value("A="), Ok(("A".into(), "".into())));
        assert_eq!(
            parse_key_value("URL=http://x/?a=b"),
            Ok(("URL".into(), "http://x/?a=b".into()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn bad_key_value_is_a_clap_error_naming_the_value() {
        let err = Cli::try_parse_from(["warren", "create", "--env", "oops"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("oops"));
    }

    #[test]
    fn create_options_map_to_request() {
        let cli = parse(&[
            "create",
            "--image",
            "host",
            "--name",
            "agent-1",
            "--cpus",
            "0.5",
            "--memory",
            "512",
            "--pids",
            "100",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--workdir",
            "/work",
            "--label",
            "team=ml",
            "-l",
            "run=7",
        ]);
        let Command::Create(opts) = cli.command else {
            panic!("expected create");
        };
        let req = opts.to_request().unwrap();
        assert_eq!(req.image.as_deref(), Some("host"));
        assert_eq!(req.name.as_deref(), Some("agent-1"));
        assert_eq!(
            req.resources,
            Some(Resources {
                cpus: Some(0.5),
                memory_mb: Some(512),
                pids_limit: Some(100),
                disk_mb: None,
            })
        );
        let env = req.env.unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(req.workdir.as_deref(), Some("/work"));
        let labels = req.metadata.unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["team"], "ml");
    }

    #[test]
    fn create_takes_lifetime_flags_and_run_keeps_its_command_timeout() {
        let cli = parse(&[
            "create",
            "--timeout",
            "600",
            "--idle-timeout",
            "60",
            "--on-timeout",
            "suspend",
            "--auto-resume",
        ]);
        let Command::Create(args) = cli.command else {
            panic!("expected create");
        };
        let req = args.to_request().unwrap();
        assert_eq!(req.timeout_secs, Some(600));
        assert_eq!(req.idle_timeout_secs, Some(60));
        assert_eq!(req.on_timeout, Some(warren_api::OnTimeout::Suspend));
        assert_eq!(req.auto_resume, Some(true));
        let cli = parse(&["run", "--timeout", "2.5", "--", "true"]);
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.timeout, Some(2.5));
        assert_eq!(args.create.to_request().unwrap().timeout_secs, None);
    }

    #[test]
    fn empty_create_sends_empty_request() {
        let req = CreateOptions::default().to_request().unwrap();
        assert_eq!(req, CreateSandboxRequest::default());
        assert_eq!(serde_json::to_string(&req).unwrap(), "{}");
    }

    #[test]
    fn huge_memory_is_rejected() {
        let opts = CreateOptions {
            memory: Some(u64::MAX),
            ..Default::default()
        };
        assert!(opts.to_request().is_err());
    }

    #[test]
    fn exec_takes_command_after_double_dash() {
        let cli = parse(&[
            "exec",
            "--cwd",
            "/tmp",
            "--env",
            "X=1",
            "--timeout",
            "1.5",
            "abc",
            "--",
            "ls",
            "-la",
        ]);
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert_eq!(args.id, "abc");
        assert_eq!(args.command, ["ls", "-la"]);
        let req = exec_request(
            &args.command,
            args.options.cwd.clone(),
            &args.options.env,
            args.options.timeout,
            None,
        );
        assert_eq!(req.timeout_ms, Some(1500));
        assert_eq!(req.cwd.as_deref(), Some("/tmp"));
        assert_eq!(req.env.unwrap()["X"], "1");
    }

    #[test]
    fn shell_takes_a_user_and_an_optional_command() {
        let cli = parse(&["shell", "--user", "agent", "abc"]);
        let Command::Shell { user, id, command } = cli.command else {
            panic!("expected shell");
        };
        assert_eq!((user.as_deref(), id.as_str()), (Some("agent"), "abc"));
        assert!(command.is_empty());
        let cli = parse(&["shell", "abc", "--", "top", "-b"]);
        let Command::Shell { command, .. } = cli.command else {
            panic!("expected shell");
        };
        assert_eq!(command, ["top", "-b"]);
        let cli = parse(&["exec", "-t", "abc", "--", "vi"]);
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert!(args.tty);
    }

    #[test]
    fn exec_flags_after_command_belong_to_the_command() {
        let cli = parse(&["exec", "abc", "sh", "-c", "echo --json"]);
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert_eq!(args.command, ["sh", "-c", "echo --json"]);
        assert!(!cli.global.json);
    }

    #[test]
    fn run_mixes_create_options_and_command() {
        let cli = parse(&["--json", "run", "--label", "a=b", "--", "echo", "hi"]);
        assert!(cli.global.json);
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.command, ["echo", "hi"]);
        assert_eq!(args.create.labels, [("a".to_owned(), "b".to_owned())]);
    }

    #[test]
    fn process_commands_parse() {
        let cli = parse(&["exec", "-d", "--tag", "srv", "abc", "--", "sleep", "9"]);
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert!(args.detach);
        assert_eq!(args.tag.as_deref(), Some("srv"));
        assert_eq!(args.command, ["sleep", "9"]);
        let cli = parse(&["logs", "abc", "7", "-f"]);
        assert!(matches!(
            cli.command,
            Command::Logs {
                pid: 7,
                follow: true,
                ..
            }
        ));
        let cli = parse(&["kill", "abc", "7", "--signal", "SIGKILL"]);
        assert!(matches!(cli.command, Command::Kill { ref signal, .. } if signal == "SIGKILL"));
        let cli = parse(&["kill", "abc", "7"]);
        assert!(matches!(cli.command, Command::Kill { ref signal, .. } if signal == "SIGTERM"));
        assert!(Cli::try_parse_from(["warren", "exec", "--tag", "x", "a", "true"]).is_err());
    }

    #[test]
    fn exec_requires_a_command() {
        assert!(Cli::try_parse_from(["warren", "exec", "abc"]).is_err());
        // `run` without a command runs the image's own command.
        let cli = parse(&["run", "--image", "busybox"]);
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert!(args.command.is_empty());
        assert_eq!(exec_request(&args.command, None, &[], None, None).cmd, None);
    }

    #[test]
    fn bad_timeout_and_state_are_rejected() {
        assert!(Cli::try_parse_from(["warren", "exec", "--timeout", "0", "a", "true"]).is_err());
        assert!(Cli::try_parse_from(["warren", "exec", "--timeout", "x", "a", "true"]).is_err());
        assert!(Cli::try_parse_from(["warren", "ls", "--state", "sleepy"]).is_err());
        let cli = parse(&["ls", "--state", "Running", "--label", "k=v"]);
        let Command::Ls(args) = cli.command else {
            panic!("expected ls");
        };
        assert_eq!(args.state, Some(SandboxState::Running));
    }

    #[test]
    fn json_flag_is_accepted_after_the_command() {
        assert!(parse(&["ls", "--json"]).global.json);
        assert!(parse(&["keys", "ls", "--json"]).global.json);
    }

    #[test]
    fn url_takes_precedence_over_socket() {
        let cli = parse(&[
            "--socket",
            "/tmp/s.sock",
            "--url",
            "http://127.0.0.1:9",
            "ls",
        ]);
        let client = cli.global.client().unwrap();
        assert_eq!(client.unix_socket_path(), None);
        let cli = parse(&["--socket", "/tmp/s.sock", "ls"]);
        let client = cli.global.client().unwrap();
        assert_eq!(
            client.unix_socket_path(),
            Some(std::path::Path::new("/tmp/s.sock"))
        );
    }
}
