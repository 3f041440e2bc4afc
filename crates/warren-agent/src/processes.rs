//! Background processes: the agent's process table.
//!
//! A spawned process keeps running after the `spawn` request is answered.
//! Its stdout and stderr go into ONE bounded buffer of chunks, each tagged
//! with its fd and the byte offset of its first byte (offsets count across
//! both streams and only grow). When the buffer is full the oldest chunks are
//! dropped; a subscriber that asks for an offset older than the oldest kept
//! byte gets a `dropped {count}` frame first, so a loss is never silent.
//! Output is pushed to every live subscriber as it arrives; a subscription
//! ends with `exited`. Finished processes stay listed (the last
//! [`KEEP_FINISHED`]) so their output can still be read.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use warren_proto::{Frame, OutputChunk, ProcessEntry, PtySize, SpawnRequest};

use crate::exec::{build_command, build_command_in, pidfd_open, pollfd};
use crate::reaper::{exit_code, Reaper};

/// Output kept per process unless the spawn asks for another size.
pub const DEFAULT_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Smallest buffer a spawn may ask for (one read's worth).
const MIN_BUFFER_BYTES: usize = 64 * 1024;
/// Largest buffer a spawn may ask for.
const MAX_BUFFER_BYTES: usize = 256 * 1024 * 1024;
/// Finished processes kept in the table.
pub const KEEP_FINISHED: usize = 64;

/// Where frames for one connection go.
pub type Sink = Arc<dyn Fn(&Frame) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn error(stream: u64, code: &str, message: String) -> Frame {
    Frame::Error {
        stream: Some(stream),
        message,
        code: Some(code.into()),
    }
}

/// A kept chunk as replayed: (fd, offset of its first byte, bytes).
pub type ChunkRef<'a> = (u8, u64, &'a [u8]);

/// The bounded, interleaved output of one process.
#[derive(Debug)]
pub struct OutputBuffer {
    chunks: VecDeque<(u8, u64, Vec<u8>)>,
    kept: usize,
    cap: usize,
    /// Offset of the oldest kept byte.
    start: u64,
    /// Offset after the newest byte.
    end: u64,
}

impl OutputBuffer {
    /// An empty buffer that keeps at most `cap` bytes (at least one chunk).
    pub fn new(cap: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            kept: 0,
            cap,
            start: 0,
            end: 0,
        }
    }

    /// Appends a chunk; returns its offset. Evicts the oldest chunks beyond the cap.
    pub fn push(&mut self, fd: u8, data: &[u8]) -> u64 {
        let offset = self.end;
        self.end += data.len() as u64;
        self.kept += data.len();
        self.chunks.push_back((fd, offset, data.to_vec()));
        while self.kept > self.cap && self.chunks.len() > 1 {
            if let Some((_, _, old)) = self.chunks.pop_front() {
                self.kept -= old.len();
            }
            self.start = self.chunks.front().map_or(self.end, |c| c.1);
        }
        offset
    }

    /// Offset after the newest byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// What a reader starting at `from` gets: the count of bytes lost before
    /// the oldest kept byte, then the kept chunks from `from` on (the first
    /// one cut to start exactly at `from`).
    pub fn replay(&self, from: u64) -> (u64, Vec<ChunkRef<'_>>) {
        let dropped = self.start.saturating_sub(from);
        let from = from.max(self.start);
        let chunks = self
            .chunks
            .iter()
            .filter(|(_, off, data)| off + data.len() as u64 > from)
            .map(|(fd, off, data)| {
                let skip = from.saturating_sub(*off) as usize;
                (*fd, off + skip as u64, &data[skip..])
            })
            .collect();
        (dropped, chunks)
    }
}

struct Subscriber {
    conn: u64,
    stream: u64,
    sink: Sink,
}

struct State {
    output: OutputBuffer,
    subscribers: Vec<Subscriber>,
    exit: Option<(i32, bool)>,
    ended_ms: Option<u64>,
}

enum StdinOp {
    Write {
        data: Vec<u8>,
        close: bool,
        stream: u64,
        sink: Sink,
    },
}

struct Process {
    pid: i32,
    tag: Option<String>,
    argv: Vec<String>,
    started_ms: u64,
    has_stdin: bool,
    stdin: Mutex<Option<Sender<StdinOp>>>,
    /// Runs under a pty.
    is_pty: bool,
    /// The pty master (for resizes) until the process exits.
    pty: Mutex<Option<OwnedFd>>,
    state: Mutex<State>,
}

impl Process {
    fn entry(&self) -> ProcessEntry {
        let state = lock(&self.state);
        ProcessEntry {
            pid: self.pid,
            tag: self.tag.clone(),
            argv: self.argv.clone(),
            running: state.exit.is_none(),
            exit_code: state.exit.map(|e| e.0),
            timed_out: state.exit.is_some_and(|e| e.1),
            stdin: self.has_stdin,
            started_ms: self.started_ms,
            ended_ms: state.ended_ms,
            output_bytes: state.output.end(),
            pty: self.is_pty,
        }
    }

    fn on_output(&self, fd: u8, data: &[u8]) {
        let mut state = lock(&self.state);
        let offset = state.output.push(fd, data);
        for sub in &state.subscribers {
            (sub.sink)(&Frame::Output(OutputChunk {
                stream: sub.stream,
                pid: self.pid,
                fd,
                offset,
                data: data.to_vec(),
            }));
        }
    }

    fn on_exit(&self, code: i32, timed_out: bool) {
        let mut state = lock(&self.state);
        state.exit = Some((code, timed_out));
        state.ended_ms = Some(now_ms());
        for sub in std::mem::take(&mut state.subscribers) {
            (sub.sink)(&Frame::Exited {
                stream: sub.stream,
                pid: self.pid,
                exit_code: code,
                timed_out,
            });
        }
        // `stdin` takes the stdin lock before the state lock: never the reverse.
        drop(state);
        // Nobody can write to a finished process.
        lock(&self.stdin).take();
        // Last copy of the master once the reader and writer are gone.
        lock(&self.pty).take();
    }
}

/// Every background process of this sandbox.
#[derive(Default)]
pub struct ProcessTable {
    procs: Mutex<HashMap<i32, Arc<Process>>>,
    finished: Mutex<VecDeque<i32>>,
}

/// What the agent knows about its environment, for spawning.
pub struct SpawnContext<'a> {
    /// The sandbox's environment.
    pub env: &'a [(String, String)],
    /// The default working directory.
    pub workdir: &'a str,
    /// The default user.
    pub user: Option<&'a str>,
    /// PID 1's reaper.
    pub reaper: &'a Reaper,
}

impl ProcessTable {
    fn get(&self, pid: i32) -> Option<Arc<Process>> {
        lock(&self.procs).get(&pid).cloned()
    }

    /// Starts a process; answers `spawned` or `error` through `sink`.
    pub fn spawn(self: &Arc<Self>, req: SpawnRequest, ctx: &SpawnContext<'_>, sink: &Sink) {
        let stream = req.stream;
        match self.start(req, ctx) {
            Ok(pid) => sink(&Frame::Spawned { stream, pid }),
            Err(message) => sink(&error(stream, "spawn", message)),
        }
    }

    fn start(self: &Arc<Self>, req: SpawnRequest, ctx: &SpawnContext<'_>) -> Result<i32, String> {
        let Some(program) = req.argv.first() else {
            return Err("empty command".into());
        };
        let cwd = req.cwd.clone().unwrap_or_else(|| ctx.workdir.to_string());
        if !Path::new(&cwd).is_dir() {
            return Err(format!(
                "cannot use {cwd} as working directory: no such directory"
            ));
        }
        let user = req.user.as_deref().or(ctx.user);
        let mut cmd = if req.pty.is_some() {
            build_command_in(program, &req.argv[1..], ctx.env, &req.env, &cwd, user)
        } else {
            build_command(program, &req.argv[1..], ctx.env, &req.env, &cwd, user)
        }
        .map_err(|m| m.trim_start_matches("warren: ").trim_end().to_string())?;
        let mut master = None;
        if let Some(size) = req.pty {
            let (m, slave) = open_pty(size).map_err(|e| format!("open a pty: {e}"))?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("open a pty: {e}"));
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            if !cmd.get_envs().any(|(k, _)| k == "TERM") {
                cmd.env("TERM", "xterm-256color");
            }
            // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            master = Some(m);
        } else {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
        let spawned = ctx.reaper.spawn(&mut cmd);
        // The slave must close here, or the master never sees the hang-up.
        drop(cmd);
        let (mut child, exited) = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{program}: command not found"),
            std::io::ErrorKind::PermissionDenied => format!("{program}: permission denied"),
            _ => format!("{program}: {e}"),
        })?;
        let pid = child.id() as i32;
        let cap = req
            .buffer_bytes
            .map_or(DEFAULT_BUFFER_BYTES, |b| b as usize)
            .clamp(MIN_BUFFER_BYTES, MAX_BUFFER_BYTES);
        let (stdin_tx, stdout, stderr, pty) = match master {
            Some(m) => {
                let clone = |f: &OwnedFd| f.try_clone().map_err(|e| format!("pty: {e}"));
                let writer = stdin_writer(std::fs::File::from(clone(&m)?), true);
                (Some(writer), Some(clone(&m)?), None, Some(m))
            }
            None => (
                child
                    .stdin
                    .take()
                    .map(|p| stdin_writer(std::fs::File::from(OwnedFd::from(p)), false)),
                child.stdout.take().map(OwnedFd::from),
                child.stderr.take().map(OwnedFd::from),
                None,
            ),
        };
        let process = Arc::new(Process {
            pid,
            tag: req.tag,
            argv: req.argv.clone(),
            started_ms: now_ms(),
            has_stdin: req.stdin || pty.is_some(),
            stdin: Mutex::new(stdin_tx),
            is_pty: pty.is_some(),
            pty: Mutex::new(pty),
            state: Mutex::new(State {
                output: OutputBuffer::new(cap),
                subscribers: Vec::new(),
                exit: None,
                ended_ms: None,
            }),
        });
        // A recycled pid replaces the finished process that had it.
        lock(&self.procs).insert(pid, Arc::clone(&process));
        lock(&self.finished).retain(|p| *p != pid);
        let deadline = req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let table = Arc::clone(self);
        std::thread::spawn(move || {
            let timed_out = pump(&process, stdout, stderr, deadline);
            let status = exited.recv().unwrap_or(-1);
            if timed_out {
                // SAFETY: kill(2) on the process's own group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            drop(child);
            process.on_exit(exit_code(status), timed_out);
            table.finish(pid);
        });
        Ok(pid)
    }

    fn finish(&self, pid: i32) {
        let mut finished = lock(&self.finished);
        finished.push_back(pid);
        while finished.len() > KEEP_FINISHED {
            if let Some(old) = finished.pop_front() {
                let mut procs = lock(&self.procs);
                if procs
                    .get(&old)
                    .is_some_and(|p| lock(&p.state).exit.is_some())
                {
                    procs.remove(&old);
                }
            }
        }
    }

    /// Answers `process_list`.
    pub fn list(&self, stream: u64, sink: &Sink) {
        let procs: Vec<Arc<Process>> = lock(&self.procs).values().cloned().collect();
        let mut entries: Vec<ProcessEntry> = procs.iter().map(|p| p.entry()).collect();
        entries.sort_by_key(|e| (e.started_ms, e.pid));
        sink(&Frame::ProcessList { stream, entries });
    }

    /// Starts a subscription: `ack`, the replay, then live output until exit.
    pub fn subscribe(
        &self,
        conn: u64,
        stream: u64,
        pid: i32,
        from: u64,
        no_follow: bool,
        sink: &Sink,
    ) {
        let Some(process) = self.get(pid) else {
            sink(&error(stream, "not_found", format!("no process {pid}")));
            return;
        };
        let mut state = lock(&process.state);
        sink(&Frame::Ack { stream });
        let (dropped, chunks) = state.output.replay(from);
        if dropped > 0 {
            sink(&Frame::Dropped {
                stream,
                pid,
                count: dropped,
            });
        }
        for (fd, offset, data) in chunks {
            sink(&Frame::Output(OutputChunk {
                stream,
                pid,
                fd,
                offset,
                data: data.to_vec(),
            }));
        }
        if let Some((exit_code, timed_out)) = state.exit {
            sink(&Frame::Exited {
                stream,
                pid,
                exit_code,
                timed_out,
            });
        } else if no_follow {
            sink(&Frame::OutputEnd {
                stream,
                offset: state.output.end().max(from),
            });
        } else {
            state.subscribers.push(Subscriber {
                conn,
                stream,
                sink: Arc::clone(sink),
            });
        }
    }

    /// Ends one subscription (`cancel`).
    pub fn cancel(&self, conn: u64, stream: u64) {
        for p in lock(&self.procs).values() {
            lock(&p.state)
                .subscribers
                .retain(|s| !(s.conn == conn && s.stream == stream));
        }
    }

    /// Ends every subscription of a closed connection.
    pub fn drop_connection(&self, conn: u64) {
        for p in lock(&self.procs).values() {
            lock(&p.state).subscribers.retain(|s| s.conn != conn);
        }
    }

    /// Writes to a process's stdin (in order, off the connection's thread);
    /// answers `ack` once written.
    pub fn stdin(&self, stream: u64, pid: i32, data: Vec<u8>, close: bool, sink: &Sink) {
        let Some(process) = self.get(pid) else {
            sink(&error(stream, "not_found", format!("no process {pid}")));
            return;
        };
        if !process.has_stdin {
            sink(&error(
                stream,
                "no_stdin",
                format!("process {pid} was started without stdin"),
            ));
            return;
        }
        let mut slot = lock(&process.stdin);
        let Some(tx) = slot.as_ref() else {
            let why = if lock(&process.state).exit.is_some() {
                "has exited"
            } else {
                "has its stdin closed"
            };
            sink(&error(
                stream,
                "not_running",
                format!("process {pid} {why}"),
            ));
            return;
        };
        let op = StdinOp::Write {
            data,
            close,
            stream,
            sink: Arc::clone(sink),
        };
        if tx.send(op).is_err() {
            sink(&error(
                stream,
                "not_running",
                format!("process {pid} has its stdin closed"),
            ));
        }
        if close {
            slot.take();
        }
    }

    /// Sets a pty process's window size (the kernel then sends SIGWINCH to
    /// its foreground group).
    pub fn resize(&self, stream: u64, pid: i32, cols: u16, rows: u16, sink: &Sink) {
        let Some(process) = self.get(pid) else {
            sink(&error(stream, "not_found", format!("no process {pid}")));
            return;
        };
        if !process.is_pty {
            sink(&error(
                stream,
                "no_pty",
                format!("process {pid} does not run under a pty"),
            ));
            return;
        }
        let master = lock(&process.pty);
        let Some(master) = master.as_ref() else {
            sink(&error(
                stream,
                "not_running",
                format!("process {pid} has exited"),
            ));
            return;
        };
        match set_winsize(master, PtySize { cols, rows }) {
            Ok(()) => sink(&Frame::Ack { stream }),
            Err(e) => sink(&error(stream, "invalid", format!("resize {pid}: {e}"))),
        }
    }

    /// Sends `signal` to the process's group.
    pub fn signal(&self, stream: u64, pid: i32, signal: i32, sink: &Sink) {
        let Some(process) = self.get(pid) else {
            sink(&error(stream, "not_found", format!("no process {pid}")));
            return;
        };
        if !(1..=64).contains(&signal) {
            sink(&error(
                stream,
                "invalid",
                format!("invalid signal {signal}"),
            ));
            return;
        }
        // Held so the process cannot be reaped (and its pid reused) meanwhile.
        let state = lock(&process.state);
        if state.exit.is_some() {
            sink(&error(
                stream,
                "not_running",
                format!("process {pid} has exited"),
            ));
            return;
        }
        // SAFETY: kill(2) on the process group the agent created for this process.
        let rc = unsafe { libc::kill(-pid, signal) };
        drop(state);
        if rc == 0 {
            sink(&Frame::Ack { stream });
        } else {
            let e = std::io::Error::last_os_error();
            sink(&error(stream, "not_running", format!("signal {pid}: {e}")));
        }
    }
}

/// One thread per stdin: writes in order, closes on request (or when every
/// sender is gone), acknowledges each write after it completed. For a pty
/// (`tty`), "close" types end-of-file (^D) instead of closing the master.
fn stdin_writer(mut pipe: std::fs::File, tty: bool) -> Sender<StdinOp> {
    let (tx, rx) = channel::<StdinOp>();
    std::thread::spawn(move || {
        while let Ok(StdinOp::Write {
            mut data,
            close,
            stream,
            sink,
        }) = rx.recv()
        {
            if close && tty {
                data.push(4);
            }
            match write_all(&mut pipe, &data) {
                Ok(()) => sink(&Frame::Ack { stream }),
                Err(e) => {
                    sink(&error(stream, "not_running", format!("write stdin: {e}")));
                    return;
                }
            }
            if close {
                return;
            }
        }
    });
    tx
}

/// `write_all` that also copes with a non-blocking fd (a pty master shares
/// its reader's O_NONBLOCK): waits for room instead of failing.
fn write_all(file: &mut std::fs::File, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut fd, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens a pseudo-terminal pair on /dev/ptmx with the given window size:
/// (master, slave). Both are close-on-exec; the child gets the slave as
/// its stdio through dup2.
pub fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    // SAFETY: open(2) with a constant NUL-terminated path; a non-negative
    // result is a fresh fd we own.
    let fd = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt/ptsname_r on a master we own; name is a live
    // buffer of the length passed.
    unsafe {
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    // SAFETY: name is NUL-terminated by ptsname_r; a non-negative result is
    // a fresh fd we own.
    let sfd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if sfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sfd is fresh and owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
    set_winsize(&master, size)?;
    Ok((master, slave))
}

/// TIOCSWINSZ on a pty master.
pub fn set_winsize(master: &OwnedFd, size: PtySize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a live struct.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn nonblocking(fd: Option<OwnedFd>) -> Option<std::fs::File> {
    fd.map(|fd| {
        // SAFETY: fcntl on an fd we own; makes reads non-blocking.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        std::fs::File::from(fd)
    })
}

/// Reads what is available on `pipe` into the process's buffer; closes it at EOF.
fn read_into(process: &Process, fd: u8, pipe: &mut Option<std::fs::File>) {
    let Some(file) = pipe.as_mut() else { return };
    let mut buf = vec![0u8; 65536];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => process.on_output(fd, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        }
    }
}

/// Moves output into the buffer until the process exits; kills its group at
/// the deadline. Returns whether the timeout fired.
fn pump(
    process: &Process,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    deadline: Option<Instant>,
) -> bool {
    let pid = process.pid;
    let mut out = nonblocking(stdout);
    let mut err = nonblocking(stderr);
    let pidfd = pidfd_open(pid);
    let mut timed_out = false;
    loop {
        let timeout_ms = match deadline {
            Some(d) if !timed_out => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            _ => -1,
        };
        let raw = |f: &Option<std::fs::File>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
        let mut fds = [
            pollfd(raw(&out)),
            pollfd(raw(&err)),
            pollfd(pidfd.as_ref().map_or(-1, |f| f.as_raw_fd())),
        ];
        // SAFETY: fds is a live array of three pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        if fds[0].revents != 0 {
            read_into(process, 1, &mut out);
        }
        if fds[1].revents != 0 {
            read_into(process, 2, &mut err);
        }
        if fds[2].revents != 0 || (pidfd.is_none() && out.is_none() && err.is_none()) {
            // Gone: take what is already in the pipes, but do not wait for
            // background children that inherited them.
            read_into(process, 1, &mut out);
            read_into(process, 2, &mut err);
            break;
        }
        if let Some(d) = deadline {
            if !timed_out && Instant::now() >= d {
                // SAFETY: kill(2) on the process's own group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                timed_out = true;
            }
        }
    }
    timed_out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_run_across_both_streams() {
        let mut b = OutputBuffer::new(1024);
        assert_eq!(b.push(1, b"abc"), 0);
        assert_eq!(b.push(2, b"de"), 3);
        assert_eq!(b.push(1, b"f"), 5);
        assert_eq!(b.end(), 6);
        let (dropped, chunks) = b.replay(0);
        assert_eq!(dropped, 0);
        assert_eq!(
            chunks,
            vec![(1, 0, &b"abc"[..]), (2, 3, &b"de"[..]), (1, 5, &b"f"[..])]
        );
    }

    #[test]
    fn replay_starts_exactly_at_the_offset_even_inside_a_chunk() {
        let mut b = OutputBuffer::new(1024);
        b.push(1, b"hello ");
        b.push(2, b"world");
        let (dropped, chunks) = b.replay(4);
        assert_eq!(dropped, 0);
        assert_eq!(chunks, vec![(1, 4, &b"o "[..]), (2, 6, &b"world"[..])]);
        assert!(b.replay(11).1.is_empty());
        assert!(b.replay(99).1.is_empty());
    }

    #[test]
    fn overflow_drops_oldest_chunks_and_counts_them() {
        let mut b = OutputBuffer::new(10);
        b.push(1, b"0123");
        b.push(1, b"4567");
        b.push(2, b"89ab");
        // 12 bytes > 10: the first chunk went.
        let (dropped, chunks) = b.replay(0);
        assert_eq!(dropped, 4);
        assert_eq!(chunks[0], (1, 4, &b"4567"[..]));
        assert_eq!(b.replay(2).0, 2);
        assert_eq!(b.replay(4).0, 0);
    }

    #[test]
    fn a_pty_pair_carries_bytes_and_its_size() {
        // Not every build host has /dev/ptmx usable (containers): skip there.
        let Ok((master, slave)) = open_pty(PtySize { cols: 91, rows: 17 }) else {
            return;
        };
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into a live struct.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (91, 17));
        set_winsize(
            &master,
            PtySize {
                cols: 100,
                rows: 30,
            },
        )
        .unwrap();
        // SAFETY: as above.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        let mut m = std::fs::File::from(master);
        let mut s = std::fs::File::from(slave);
        write_all(&mut m, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
    }

    #[test]
    fn one_oversized_chunk_is_kept() {
        let mut b = OutputBuffer::new(2);
        b.push(1, b"abcdef");
        assert_eq!(b.replay(0), (0, vec![(1, 0, &b"abcdef"[..])]));
        b.push(1, b"g");
        assert_eq!(b.replay(0), (6, vec![(1, 6, &b"g"[..])]));
    }
}
