//! `exec` and `run`: commands whose exit code becomes the CLI's.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use warren_client::{Client, ExecRequest, ExecResult, OutputEvent, StartProcessRequest};

use crate::args::{exec_request, read_stdin, ExecArgs, RunArgs};
use crate::output::{error_line, print_json};
use crate::sandbox_commands::create_sandbox;

/// Exit code when the CLI itself is interrupted (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// Exit code when the CLI's own stdout went away (128 + SIGPIPE).
const BROKEN_PIPE: u8 = 141;

/// Bytes of the caller's stdin read (and sent) at a time.
const STDIN_CHUNK: usize = 64 * 1024;

/// `warren exec ID -- CMD…`: streams the command's output as it arrives
/// (through the processes API); with `--json`, runs it buffered and prints
/// the result.
pub async fn exec(client: &Client, args: &ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        exec_buffered(client, args, true).await
    } else {
        exec_streaming(client, args).await
    }
}

/// `POST /exec`: waits for the command, then prints its output (or, with
/// `json`, its [`ExecResult`]).
async fn exec_buffered(client: &Client, args: &ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
    let stdin = args.options.interactive.then(read_stdin).transpose()?;
    let mut request = exec_request(
        &args.command,
        args.options.cwd.clone(),
        &args.options.env,
        args.options.timeout,
        stdin,
    );
    request.user = args.options.user.clone();
    let result = client.exec(&args.id, &request).await?;
    report(&result, &request, json)
}

/// Starts the command as a process, forwards our stdin to it (with `-i`, or
/// whenever stdin is not a terminal), writes its stdout and stderr chunks to
/// ours as they arrive and exits with its exit code. Ctrl-C sends SIGINT to
/// the command's process group (a second one SIGKILL).
async fn exec_streaming(client: &Client, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let forward_stdin = args.options.interactive || !std::io::stdin().is_terminal();
    let exec = exec_request(
        &args.command,
        args.options.cwd.clone(),
        &args.options.env,
        args.options.timeout,
        None,
    );
    let request = StartProcessRequest {
        cmd: exec.cmd,
        shell: None,
        cwd: exec.cwd,
        env: exec.env,
        user: args.options.user.clone(),
        stdin: forward_stdin.then_some(true),
        timeout_ms: exec.timeout_ms,
        ..Default::default()
    };
    let id = args.id.as_str();
    let pid = match client.start_process(id, &request).await {
        Ok(process) => process.pid,
        // The command could not start (no such program, bad directory or
        // user), or this sandbox has no process control: nothing ran, so the
        // buffered path reports it exactly as it always did (exit code 127
        // and one line for a missing program).
        Err(err) if not_started(&err) => return exec_buffered(client, args, false).await,
        Err(err) => return Err(err.into()),
    };

    let stdin_task = forward_stdin.then(|| {
        let client = client.clone();
        let id = id.to_owned();
        tokio::spawn(async move { forward_stdin_to(&client, &id, pid).await })
    });
    let outcome = follow_output(client, id, pid).await;
    let stdin_error = match stdin_task {
        Some(task) if task.is_finished() => task.await.ok().and_then(Result::err),
        Some(task) => {
            task.abort();
            None
        }
        None => None,
    };
    let outcome = outcome?;
    match outcome {
        Followed::Exited {
            exit_code,
            timed_out,
        } => {
            if timed_out {
                let mut stderr = std::io::stderr().lock();
                writeln!(stderr, "{}", timeout_line(request.timeout_ms))?;
                stderr.flush()?;
            }
            if let Some(err) = stdin_error {
                return Err(err);
            }
            Ok(ExitCode::from(exit_status_byte(exit_code)))
        }
        Followed::BrokenPipe => Ok(ExitCode::from(BROKEN_PIPE)),
    }
}

/// Whether starting a process failed because of the command itself (or a
/// driver without background processes) rather than the sandbox or daemon.
fn not_started(err: &warren_client::ClientError) -> bool {
    match err {
        warren_client::ClientError::Api { status, code, .. } => {
            matches!(status, 400 | 422) || code == "capability_unsupported"
        }
        _ => false,
    }
}

/// How following a process's output ended.
enum Followed {
    Exited {
        exit_code: i32,
        timed_out: bool,
    },
    /// Our stdout or stderr was closed; the command got SIGKILL.
    BrokenPipe,
}

/// Writes the process's output to our stdout/stderr until it exits,
/// resuming after the last event when the stream ends early.
async fn follow_output(client: &Client, id: &str, pid: i32) -> anyhow::Result<Followed> {
    let mut from = None;
    let mut interrupts = 0u32;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let mut stream = client.process_output(id, pid, from, true).await?;
        loop {
            let event = tokio::select! {
                event = stream.next() => event?,
                _ = &mut ctrl_c => {
                    interrupts += 1;
                    let signal = if interrupts == 1 { "SIGINT" } else { "SIGKILL" };
                    // The process may have exited meanwhile; its exit event follows.
                    let _ = client.signal_process(id, pid, signal).await;
                    ctrl_c.set(tokio::signal::ctrl_c());
                    continue;
                }
            };
            let Some(event) = event else { break };
            from = Some(event.id());
            match event {
                OutputEvent::Output { fd, data, .. } => {
                    if write_chunk(fd, &data).is_err() {
                        let _ = client.signal_process(id, pid, "SIGKILL").await;
                        return Ok(Followed::BrokenPipe);
                    }
                }
                OutputEvent::Dropped { bytes, .. } => {
                    eprintln!(
                        "warren: {bytes} bytes of output were dropped (the process's output buffer overflowed)"
                    );
                }
                OutputEvent::Exit {
                    exit_code,
                    timed_out,
                    ..
                } => {
                    return Ok(Followed::Exited {
                        exit_code,
                        timed_out,
                    })
                }
            }
        }
        // The stream ended before the exit (the daemon cut a slow reader):
        // resume exactly where we stopped.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_chunk(fd: u8, data: &[u8]) -> std::io::Result<()> {
    if fd == 2 {
        let mut err = std::io::stderr().lock();
        err.write_all(data)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
}

/// Sends our stdin to the process in chunks and closes its stdin at EOF.
/// Stdin is read on a plain thread: a blocking read cannot be cancelled,
/// and the CLI must be able to exit while it waits.
async fn forward_stdin_to(client: &Client, id: &str, pid: i32) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<StdinChunk>(4);
    std::thread::spawn(move || read_stdin_chunks(std::io::stdin().lock(), &tx));
    while let Some(chunk) = rx.recv().await {
        match chunk {
            StdinChunk::Text(text) => {
                if client.write_stdin(id, pid, &text, false).await.is_err() {
                    // The process closed its stdin or exited: stop feeding it.
                    return Ok(());
                }
            }
            StdinChunk::Eof => {
                let _ = client.write_stdin(id, pid, "", true).await;
                return Ok(());
            }
            StdinChunk::Failed(message) => {
                let _ = client.signal_process(id, pid, "SIGKILL").await;
                anyhow::bail!("{message}");
            }
        }
    }
    Ok(())
}

/// What the stdin reader thread hands over.
#[derive(Debug, PartialEq, Eq)]
enum StdinChunk {
    Text(String),
    Eof,
    Failed(String),
}

/// Reads `input` in chunks of whole UTF-8 characters until EOF (the API's
/// stdin is text).
fn read_stdin_chunks(mut input: impl Read, tx: &mpsc::Sender<StdinChunk>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => {
                let last = if pending.is_empty() {
                    StdinChunk::Eof
                } else {
                    StdinChunk::Failed(NOT_UTF8.to_owned())
                };
                let _ = tx.blocking_send(last);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(StdinChunk::Failed(format!(
                    "cannot read standard input: {e}"
                )));
                return;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        let chunk = match take_utf8(&mut pending) {
            Ok(text) if text.is_empty() => continue,
            Ok(text) => StdinChunk::Text(text),
            Err(message) => StdinChunk::Failed(message),
        };
        let failed = matches!(chunk, StdinChunk::Failed(_));
        if tx.blocking_send(chunk).is_err() || failed {
            return;
        }
    }
}

const NOT_UTF8: &str = "standard input is not UTF-8 text; binary stdin is not supported yet";

/// Takes the longest valid UTF-8 prefix of `pending`, leaving an incomplete
/// character at the end for the next read; invalid bytes are an error.
fn take_utf8(pending: &mut Vec<u8>) -> Result<String, String> {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return Err(NOT_UTF8.to_owned()),
    };
    let rest = pending.split_off(valid);
    let text = std::mem::replace(pending, rest);
    String::from_utf8(text).map_err(|_| NOT_UTF8.to_owned())
}

/// `warren run -- CMD…`: create, exec, delete (also when exec fails or the
/// user presses ctrl-c).
pub async fn run(client: &Client, args: &RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let stdin = args.interactive.then(read_stdin).transpose()?;
    let request = exec_request(&args.command, None, &[], args.timeout, stdin);
    let sandbox = create_sandbox(client, &args.create, json).await?;

    let outcome = tokio::select! {
        result = client.exec(&sandbox.id, &request) => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };

    if args.keep {
        eprintln!("warren: kept sandbox {}", sandbox.id);
    } else if let Err(err) = client.delete_sandbox(&sandbox.id).await {
        let line = error_line(&err.into());
        eprintln!("error: could not delete sandbox {}: {line}", sandbox.id);
        // Surface the leak in the exit code unless the command already failed.
        return Ok(match outcome {
            Some(Ok(result)) if result.exit_code != 0 => report(&result, &request, json)?,
            Some(Ok(result)) => {
                report(&result, &request, json)?;
                ExitCode::FAILURE
            }
            Some(Err(err)) => return Err(err.into()),
            None => ExitCode::from(INTERRUPTED),
        });
    }

    match outcome {
        Some(result) => report(&result?, &request, json),
        None => Ok(ExitCode::from(INTERRUPTED)),
    }
}

/// Writes the command's output to the matching streams (or the JSON result)
/// and turns its exit code into ours.
fn report(result: &ExecResult, request: &ExecRequest, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(result)?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(result.stdout.as_bytes())?;
        stdout.flush()?;
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(result.stderr.as_bytes())?;
        if result.timed_out {
            writeln!(stderr, "{}", timeout_line(request.timeout_ms))?;
        }
        stderr.flush()?;
    }
    Ok(ExitCode::from(exit_status_byte(result.exit_code)))
}

/// The one line printed when the command's timeout killed it.
fn timeout_line(timeout_ms: Option<u64>) -> String {
    let limit = timeout_ms
        .map(|ms| format!(" after {}", format_secs(ms)))
        .unwrap_or_default();
    format!("warren: the command timed out{limit} and was killed")
}

/// The process exit status for a command's exit code; values outside
/// 0..=255 (which a shell could not see either) become 1 rather than wrap to 0.
fn exit_status_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn format_secs(ms: u64) -> String {
    let text = format!("{:.1}", ms as f64 / 1000.0);
    format!("{} s", text.strip_suffix(".0").unwrap_or(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_without_wrapping_to_success() {
        assert_eq!(exit_status_byte(0), 0);
        assert_eq!(exit_status_byte(3), 3);
        assert_eq!(exit_status_byte(137), 137);
        assert_eq!(exit_status_byte(256), 1);
        assert_eq!(exit_status_byte(-1), 1);
    }

    #[test]
    fn timeouts_read_naturally() {
        assert_eq!(format_secs(5000), "5 s");
        assert_eq!(format_secs(1500), "1.5 s");
        assert_eq!(
            timeout_line(Some(1000)),
            "warren: the command timed out after 1 s and was killed"
        );
    }

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let mut pending = "aé".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut pending).unwrap(), "a");
        assert_eq!(pending, [0xC3]);
        pending.push(0xA9);
        assert_eq!(take_utf8(&mut pending).unwrap(), "é");
        assert!(pending.is_empty());
        let mut bad = vec![b'x', 0xFF, b'y'];
        assert!(take_utf8(&mut bad).is_err());
    }

    #[test]
    fn stdin_reader_sends_text_chunks_then_eof() {
        let input: Vec<u8> = "ü".repeat(STDIN_CHUNK).into_bytes();
        let (tx, mut rx) = mpsc::channel(1024);
        read_stdin_chunks(&input[..], &tx);
        let mut text = String::new();
        let mut last = None;
        while let Ok(chunk) = rx.try_recv() {
            match chunk {
                StdinChunk::Text(t) => text.push_str(&t),
                other => last = Some(other),
            }
        }
        assert_eq!(text.len(), input.len());
        assert_eq!(last, Some(StdinChunk::Eof));

        let (tx, mut rx) = mpsc::channel(8);
        read_stdin_chunks(&[b'a', 0xC3][..], &tx);
        assert_eq!(rx.try_recv().unwrap(), StdinChunk::Text("a".into()));
        assert!(matches!(rx.try_recv().unwrap(), StdinChunk::Failed(_)));
    }
}
