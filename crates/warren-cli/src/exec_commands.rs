//! `exec` and `run`: commands whose exit code becomes the CLI's.

use std::io::Write;
use std::process::ExitCode;

use warren_client::{Client, ExecRequest, ExecResult};

use crate::args::{exec_request, read_stdin, ExecArgs, RunArgs};
use crate::output::{error_line, print_json};
use crate::sandbox_commands::create_sandbox;

/// Exit code when the CLI itself is interrupted (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// `warren exec ID -- CMD…`.
pub async fn exec(client: &Client, args: &ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
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
            let limit = request
                .timeout_ms
                .map(|ms| format!(" after {}", format_secs(ms)))
                .unwrap_or_default();
            writeln!(
                stderr,
                "warren: the command timed out{limit} and was killed"
            )?;
        }
        stderr.flush()?;
    }
    Ok(ExitCode::from(exit_status_byte(result.exit_code)))
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
    }
}
