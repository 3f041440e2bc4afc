//! `warren shell ID` (and `warren exec -t`): a process under a pty in the
//! sandbox, attached over a WebSocket, with the local terminal in raw mode.
//!
//! The local terminal is restored when the command ends, on error, on panic,
//! and on SIGTERM, SIGHUP or SIGQUIT to the CLI.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use warren_client::{AttachControl, AttachEvent, Client, PtySize, StartProcessRequest, WsMessage};

/// The login shell started when no command is given.
const LOGIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// Settings of the local terminal before raw mode, restored on the way out.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The local terminal's size, or 80×24 when stdin is not a terminal.
pub fn terminal_size() -> PtySize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into a live struct.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        PtySize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        }
    } else {
        PtySize { cols: 80, rows: 24 }
    }
}

/// Puts stdin's terminal in raw mode until dropped (no-op when stdin is not
/// a terminal).
struct RawMode;

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        // SAFETY: isatty on fd 0.
        if unsafe { libc::isatty(0) } != 1 {
            return Ok(RawMode);
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into a live termios.
        if unsafe { libc::tcgetattr(0, &mut original) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(original);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let mut raw = original;
        // SAFETY: cfmakeraw edits a live termios; tcsetattr reads it.
        unsafe {
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the terminal settings saved by [`RawMode::enter`], once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(original) = saved {
        // SAFETY: tcsetattr reads a live termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &original) };
    }
}

/// `warren shell`: a login shell (or `command`) under a pty of the local
/// terminal's size; exits with its exit code.
pub async fn shell(
    client: &Client,
    id: &str,
    user: Option<String>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let req = StartProcessRequest {
        cmd: (!command.is_empty()).then_some(command),
        shell: None,
        user,
        pty: Some(terminal_size()),
        ..Default::default()
    };
    let req = if req.cmd.is_none() {
        StartProcessRequest {
            shell: Some(LOGIN_SHELL.to_owned()),
            ..req
        }
    } else {
        req
    };
    run_tty(client, id, &req).await
}

/// `warren exec -t`: the command under a pty, attached to this terminal.
pub async fn exec_tty(client: &Client, args: &crate::args::ExecArgs) -> anyhow::Result<ExitCode> {
    let o = &args.options;
    let exec = crate::args::exec_request(&args.command, o.cwd.clone(), &o.env, o.timeout, None);
    let req = StartProcessRequest {
        cmd: exec.cmd,
        cwd: exec.cwd,
        env: exec.env,
        user: o.user.clone(),
        timeout_ms: exec.timeout_ms,
        pty: Some(terminal_size()),
        ..Default::default()
    };
    run_tty(client, &args.id, &req).await
}

/// Starts `req` (which must ask for a pty) and attaches the local terminal.
pub async fn run_tty(
    client: &Client,
    id: &str,
    req: &StartProcessRequest,
) -> anyhow::Result<ExitCode> {
    let process = client.start_process(id, req).await?;
    let socket = client.attach(id, process.pid, 0).await?;
    let raw = RawMode::enter().context("cannot put the terminal in raw mode")?;
    let code = pump(socket).await;
    drop(raw);
    let code = code?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Moves bytes until the process exits; returns its exit code.
async fn pump(socket: warren_client::Attached) -> anyhow::Result<i32> {
    let (mut tx, mut rx) = socket.split();
    // Stdin is read on a plain thread: a blocked read must never keep the
    // CLI from exiting.
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stdin_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut winch = signal(SignalKind::window_change())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut stdin_open = true;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            message = rx.next() => {
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => anyhow::bail!("connection to the process lost: {e}"),
                    None => anyhow::bail!("the daemon closed the connection before the process exited"),
                };
                match message {
                    WsMessage::Binary(data) => {
                        stdout.write_all(&data)?;
                        stdout.flush()?;
                    }
                    WsMessage::Text(text) => match serde_json::from_str::<AttachEvent>(text.as_str()) {
                        Ok(AttachEvent::Exit { exit_code, .. }) => return Ok(exit_code),
                        Ok(AttachEvent::Output { base64, .. }) => {
                            use base64::Engine;
                            let data = base64::engine::general_purpose::STANDARD
                                .decode(base64)
                                .unwrap_or_default();
                            let mut stderr = std::io::stderr();
                            stderr.write_all(&data)?;
                            stderr.flush()?;
                        }
                        Ok(AttachEvent::Error { message }) => {
                            eprint!("warren: {message}\r\n");
                        }
                        Ok(AttachEvent::Dropped { .. }) | Err(_) => {}
                    },
                    WsMessage::Close(_) => {
                        anyhow::bail!("the daemon closed the connection before the process exited")
                    }
                    _ => {}
                }
            }
            input = stdin_rx.recv(), if stdin_open => match input {
                Some(data) => tx.send(WsMessage::Binary(data.into())).await?,
                None => {
                    stdin_open = false;
                    tx.send(control(&AttachControl::CloseStdin)).await?;
                }
            },
            _ = winch.recv() => {
                let PtySize { cols, rows } = terminal_size();
                tx.send(control(&AttachControl::Resize { cols, rows })).await?;
            }
            _ = term.recv() => anyhow::bail!("terminated"),
            _ = hup.recv() => anyhow::bail!("hung up"),
            _ = quit.recv() => anyhow::bail!("quit"),
        }
    }
}

fn control(message: &AttachControl) -> WsMessage {
    WsMessage::Text(serde_json::to_string(message).unwrap_or_default().into())
}
