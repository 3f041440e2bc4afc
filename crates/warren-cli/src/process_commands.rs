//! Background processes: `exec -d`, `ps`, `logs`, `kill`.

use std::io::Write;
use std::process::ExitCode;

use warren_client::{Client, OutputEvent, Process, StartProcessRequest};

use crate::args::{exec_request, ExecArgs};
use crate::output::{print_json, render_table};

/// `warren exec -d ID -- CMD…`: starts the command and prints its pid.
pub async fn start(client: &Client, args: &ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.options.interactive {
        anyhow::bail!(
            "-i cannot be combined with -d; write to a background process with POST …/processes/PID/stdin"
        );
    }
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
        stdin: None,
        timeout_ms: exec.timeout_ms,
        tag: args.tag.clone(),
        pty: None,
    };
    let process = client.start_process(&args.id, &request).await?;
    if json {
        print_json(&process)?;
    } else {
        println!("{}", process.pid);
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren ps ID`.
pub async fn list(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let processes = client.list_processes(id).await?;
    if json {
        print_json(&processes)?;
    } else {
        print!("{}", process_table(&processes));
    }
    Ok(ExitCode::SUCCESS)
}

fn process_table(processes: &[Process]) -> String {
    let rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
            let status = match (p.status.as_str(), p.exit_code) {
                ("exited", Some(code)) if p.timed_out => format!("timed out ({code})"),
                ("exited", Some(code)) => format!("exited ({code})"),
                (status, _) => status.to_owned(),
            };
            vec![
                p.pid.to_string(),
                status,
                p.tag.clone().unwrap_or_else(|| "-".to_owned()),
                p.started_at.clone(),
                p.cmd.join(" "),
            ]
        })
        .collect();
    render_table(&["PID", "STATUS", "TAG", "STARTED", "COMMAND"], &rows)
}

/// `warren logs ID PID [-f]`: stdout to stdout, stderr to stderr. With
/// `-f`, follows until the process exits (reconnecting where it left off)
/// and exits with its code.
pub async fn logs(client: &Client, id: &str, pid: i32, follow: bool) -> anyhow::Result<ExitCode> {
    let mut from = None;
    loop {
        let mut stream = client.process_output(id, pid, from, follow).await?;
        while let Some(event) = stream.next().await? {
            from = Some(event.id());
            match event {
                OutputEvent::Output { fd, data, .. } => {
                    if fd == 2 {
                        let mut err = std::io::stderr().lock();
                        err.write_all(&data)?;
                        err.flush()?;
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&data)?;
                        out.flush()?;
                    }
                }
                OutputEvent::Dropped { bytes, .. } => {
                    eprintln!(
                        "warren: {bytes} bytes of output were dropped (the process's output buffer overflowed)"
                    );
                }
                OutputEvent::Exit { exit_code, .. } => {
                    return Ok(if follow {
                        ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
                    } else {
                        ExitCode::SUCCESS
                    });
                }
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        // The stream ended before the exit (the daemon cut a slow reader,
        // or restarted): resume exactly where we stopped.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `warren kill ID PID [--signal NAME]`.
pub async fn kill(client: &Client, id: &str, pid: i32, signal: &str) -> anyhow::Result<ExitCode> {
    client.signal_process(id, pid, signal).await?;
    Ok(ExitCode::SUCCESS)
}
