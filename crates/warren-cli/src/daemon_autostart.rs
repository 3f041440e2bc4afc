//! Starting a local daemon on demand, so `warren run -- echo hi` works on a
//! fresh host with nothing set up.
//!
//! When the client talks to a unix socket and nothing listens there (the
//! socket is missing or refuses connections), the CLI starts
//! `warren serve --data-dir DIR --socket PATH` in its own session with its
//! output appended to `DIR/warren.log`, waits for `/healthz`, and carries on.
//! A lock file in the data directory keeps concurrent CLIs from starting two
//! daemons.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use warren_client::{Client, ClientError};

/// The daemon's log file inside the data directory.
pub const LOG_FILE: &str = "warren.log";
/// Held while one CLI starts the daemon.
const LOCK_FILE: &str = "daemon-start.lock";
/// How long a freshly started daemon may take to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Returns `client` once a daemon answers at its address, starting one when
/// `client` talks to a unix socket that nobody listens on and `allowed`.
pub async fn ensure_daemon(
    client: Client,
    data_dir: &Path,
    allowed: bool,
) -> anyhow::Result<Client> {
    let Some(socket) = client.unix_socket_path().map(Path::to_path_buf) else {
        return Ok(client);
    };
    match client.health().await {
        Ok(_) => return Ok(client),
        Err(err) if allowed && err.is_daemon_absent() => {}
        Err(err) => return Err(with_hint(err, allowed)),
    }

    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "no Warren daemon is running at {} and the data directory {} cannot be created to start one (run as root, or set WARREN_HOME)",
            socket.display(),
            data_dir.display()
        )
    })?;
    let _lock = lock_start(data_dir).await?;
    // Another CLI may have started the daemon while this one waited for the lock.
    if client.health().await.is_ok() {
        return Ok(client);
    }

    let log_path = data_dir.join(LOG_FILE);
    let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let mut child = spawn_daemon(data_dir, &socket, &log_path)?;
    eprintln!(
        "warren: started daemon (pid {}, log {})",
        child.id(),
        log_path.display()
    );
    wait_until_ready(&client, &mut child, &log_path, log_start).await?;
    Ok(client)
}

/// Adds what to do next to a connection error that autostart cannot fix.
fn with_hint(err: ClientError, autostart_allowed: bool) -> anyhow::Error {
    if err.is_daemon_absent() && !autostart_allowed {
        anyhow::Error::new(err)
            .context("no Warren daemon is running; start one with `warren serve`")
    } else {
        err.into()
    }
}

/// Takes an exclusive `flock` on the start lock, waiting for another starter.
async fn lock_start(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let file = tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(file)
        } else {
            Err(io::Error::last_os_error())
        }
    })
    .await?
    .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// The command line that starts the daemon.
pub fn daemon_command(exe: &Path, data_dir: &Path, socket: &Path) -> Command {
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--socket")
        .arg(socket)
        // The daemon must not inherit a client-side URL meant for this CLI.
        .env_remove("WARREN_URL");
    command
}

fn spawn_daemon(data_dir: &Path, socket: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the warren executable")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let mut command = daemon_command(&exe, data_dir, socket);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid(2), which is async-signal-safe, and allocates nothing. A new
    // session detaches the daemon from this terminal and its signals.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start the daemon {}", exe.display()))
}

async fn wait_until_ready(
    client: &Client,
    child: &mut Child,
    log_path: &Path,
    log_start: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if client.health().await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("cannot check on the daemon")? {
            let last = last_log_line(log_path, log_start)
                .map(|line| format!(": {line}"))
                .unwrap_or_default();
            bail!(
                "the daemon exited ({status}) before it was ready (log {}){last}",
                log_path.display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon (pid {}) did not answer within {} s; see {}",
                child.id(),
                READY_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The last non-empty line the daemon wrote to its log in this run.
fn last_log_line(log_path: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log_path).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| strip_ansi(line).chars().take(300).collect())
}

/// Removes ANSI colour sequences, which tracing writes even to files.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_command_passes_data_dir_and_socket() {
        let cmd = daemon_command(
            Path::new("/usr/bin/warren"),
            Path::new("/var/lib/warren"),
            Path::new("/run/warren/warren.sock"),
        );
        assert_eq!(cmd.get_program(), "/usr/bin/warren");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "serve",
                "--data-dir",
                "/var/lib/warren",
                "--socket",
                "/run/warren/warren.sock"
            ]
        );
    }

    #[test]
    fn last_log_line_reads_only_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        std::fs::write(&path, "old run failed\n").unwrap();
        let start = std::fs::metadata(&path).unwrap().len();
        assert_eq!(last_log_line(&path, start), None);
        std::fs::write(
            &path,
            "old run failed\n\x1b[31mERROR\x1b[0m cannot bind socket: permission denied\n\n",
        )
        .unwrap();
        assert_eq!(
            last_log_line(&path, start).as_deref(),
            Some("ERROR cannot bind socket: permission denied")
        );
    }

    #[tokio::test]
    async fn tcp_clients_are_never_autostarted() {
        let client = Client::tcp("http://127.0.0.1:1", None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = ensure_daemon(client, &dir.path().join("data"), true).await;
        assert!(out.is_ok());
        assert!(!dir.path().join("data").exists());
    }

    #[tokio::test]
    async fn missing_daemon_without_autostart_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::unix(dir.path().join("none.sock"));
        let err = ensure_daemon(client, dir.path(), false).await.unwrap_err();
        let line = crate::output::error_line(&err);
        assert!(line.contains("warren serve"), "{line}");
        assert!(line.contains("none.sock"), "{line}");
    }
}
