//! PID 1 inside the sandbox: accept daemon connections and serve frames.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, PoisonError};

use warren_linux::launch::AgentInitConfig;
use warren_proto::{read_frame, write_frame, Frame, PROTOCOL_VERSION};

use crate::processes::{ProcessTable, Sink, SpawnContext};
use crate::reaper::Reaper;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) struct Agent {
    env: Vec<(String, String)>,
    workdir: String,
    user: Option<String>,
    reaper: Reaper,
    processes: Arc<ProcessTable>,
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn run(config_json: &str) -> i32 {
    let cfg: AgentInitConfig = match serde_json::from_str(config_json) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("warren-agent: bad init config: {e}");
            return 2;
        }
    };
    let _ = std::fs::create_dir_all(&cfg.workdir);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "xterm-256color".into()),
        ("HOSTNAME".into(), hostname.trim().to_string()),
    ];
    for (k, v) in cfg.env {
        env.retain(|(existing, _)| existing != &k);
        env.push((k, v));
    }
    if let Some(user) = &cfg.user {
        // The default user owns the default working directory.
        match crate::users::resolve_or_create(user) {
            Ok(account) => {
                let _ =
                    std::os::unix::fs::chown(&cfg.workdir, Some(account.uid), Some(account.gid));
            }
            Err(e) => eprintln!("warren-agent: default user {user}: {e}"),
        }
    }
    let agent = Arc::new(Agent {
        env,
        workdir: cfg.workdir,
        user: cfg.user,
        reaper: Reaper::start(),
        processes: Arc::default(),
    });
    if let Some(path) = &cfg.listen_path {
        // Only the gVisor driver has the agent bind its socket itself, and
        // only gVisor's kernel lacks openat2.
        crate::files::enable_openat2_emulation();
        return crate::path_listener::serve(std::path::Path::new(path), &agent);
    }
    // SAFETY: the bootstrap passed us this listening socket and nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(cfg.listen_fd) };
    // SAFETY: fcntl on the fd we now own; keeps it out of commands we spawn.
    unsafe { libc::fcntl(cfg.listen_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => accept_connection(&agent, stream),
            Err(e) => eprintln!("warren-agent: accept: {e}"),
        }
    }
    0
}

/// Serves one accepted connection on its own thread.
pub(crate) fn accept_connection(agent: &Arc<Agent>, stream: UnixStream) {
    let agent = Arc::clone(agent);
    // The agent's threads count against the sandbox's pids limit:
    // when it is exhausted, refuse this connection (the daemon
    // sees it closed) instead of panicking PID 1.
    let spawned = std::thread::Builder::new().spawn(move || serve_connection(&agent, stream));
    if let Err(e) = spawned {
        eprintln!("warren-agent: no thread for a connection: {e}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) {
    let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = write_frame(&mut *w, frame);
    let _ = w.flush();
}

fn serve_connection(agent: &Arc<Agent>, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(write_half));
    let mut reader = std::io::BufReader::new(stream);
    match read_frame(&mut reader) {
        Ok(Some(Frame::Hello { version, .. })) if version >= 1 => {}
        Ok(Some(Frame::Hello { version, .. })) => {
            send(
                &writer,
                &Frame::Error {
                    stream: None,
                    message: format!("unsupported protocol version {version}"),
                    code: None,
                },
            );
            return;
        }
        _ => {
            send(
                &writer,
                &Frame::Error {
                    stream: None,
                    message: "expected hello".into(),
                    code: None,
                },
            );
            return;
        }
    }
    send(
        &writer,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            software: Some(format!("warren-agent {}", env!("CARGO_PKG_VERSION"))),
        },
    );
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sink: Sink = {
        let writer = Arc::clone(&writer);
        Arc::new(move |frame: &Frame| send(&writer, frame))
    };
    serve_frames(agent, conn, &writer, &sink, &mut reader);
    agent.processes.drop_connection(conn);
}

fn serve_frames(
    agent: &Arc<Agent>,
    conn: u64,
    writer: &Arc<Mutex<UnixStream>>,
    sink: &Sink,
    reader: &mut std::io::BufReader<UnixStream>,
) {
    let writer = Arc::clone(writer);
    loop {
        let frame = match read_frame(reader) {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                send(
                    &writer,
                    &Frame::Error {
                        stream: None,
                        message: e.to_string(),
                        code: None,
                    },
                );
                return;
            }
        };
        match frame {
            Frame::Exec(req) => {
                let agent = Arc::clone(agent);
                let stream = req.stream;
                let thread_writer = Arc::clone(&writer);
                let spawned = std::thread::Builder::new().spawn(move || {
                    let done = crate::exec::run(
                        req,
                        &agent.env,
                        &agent.workdir,
                        agent.user.as_deref(),
                        &agent.reaper,
                    );
                    send(&thread_writer, &Frame::ExecDone(done));
                });
                if let Err(e) = spawned {
                    // The sandbox's pids limit is exhausted: say so instead
                    // of panicking this connection's thread.
                    send(
                        &writer,
                        &Frame::Error {
                            stream: Some(stream),
                            message: format!(
                                "cannot start the command: the sandbox is out of processes \
                                 (pids limit reached): {e}"
                            ),
                            code: Some("resource_exhausted".into()),
                        },
                    );
                }
            }
            Frame::Ping { stream } => send(&writer, &Frame::Pong { stream }),
            Frame::Spawn(req) => {
                let ctx = SpawnContext {
                    env: &agent.env,
                    workdir: &agent.workdir,
                    user: agent.user.as_deref(),
                    reaper: &agent.reaper,
                };
                agent.processes.spawn(req, &ctx, sink);
            }
            Frame::ProcessOutputRequest {
                stream,
                pid,
                from,
                no_follow,
            } => agent
                .processes
                .subscribe(conn, stream, pid, from, no_follow, sink),
            Frame::Cancel { stream } => agent.processes.cancel(conn, stream),
            Frame::Stdin {
                stream,
                pid,
                data,
                close,
            } => agent.processes.stdin(stream, pid, data, close, sink),
            Frame::Signal {
                stream,
                pid,
                signal,
            } => agent.processes.signal(stream, pid, signal, sink),
            Frame::Resize {
                stream,
                pid,
                cols,
                rows,
            } => agent.processes.resize(stream, pid, cols, rows, sink),
            Frame::ListProcesses { stream } => agent.processes.list(stream, sink),
            // A file request takes over its connection (raw data may follow
            // it, and the thread takes the user's file-system identity).
            frame if crate::files::is_request(&frame) => {
                crate::files::serve(frame, agent.user.as_deref(), reader);
                return;
            }
            other => send(
                &writer,
                &Frame::Error {
                    stream: None,
                    message: format!("unexpected frame {other:?}"),
                    code: None,
                },
            ),
        }
    }
}
