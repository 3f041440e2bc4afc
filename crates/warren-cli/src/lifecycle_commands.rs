//! `warren suspend`, `warren update` and `warren events`.

use std::process::ExitCode;

use clap::Args;
use warren_client::{Client, OnTimeout, SandboxEvent, SandboxEventList, UpdateSandboxRequest};

use crate::output::print_json;
use crate::spinner::Spinner;

/// Options of `warren update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Sandbox id.
    pub id: String,
    /// Seconds from now until the sandbox times out (0: no timeout).
    #[arg(long = "timeout", value_name = "SECS")]
    pub timeout_secs: Option<i64>,
    /// Seconds without exec, file or port activity until it times out (0: none).
    #[arg(long = "idle-timeout", value_name = "SECS")]
    pub idle_timeout_secs: Option<i64>,
    /// What a timeout does: delete, pause or suspend.
    #[arg(long, value_name = "ACTION", value_parser = crate::args::parse_on_timeout)]
    pub on_timeout: Option<OnTimeout>,
    /// Resume a paused or suspended sandbox on its next request.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub auto_resume: Option<bool>,
}

impl UpdateArgs {
    fn to_request(&self) -> UpdateSandboxRequest {
        UpdateSandboxRequest {
            timeout_secs: self.timeout_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            on_timeout: self.on_timeout,
            auto_resume: self.auto_resume,
        }
    }
}

/// `warren suspend ID`: prints the id and whether memory was kept (JSON:
/// the sandbox, now suspended).
pub async fn suspend(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let spinner = Spinner::start(&format!("suspending {id}"), json);
    let sandbox = client.suspend_sandbox(id).await;
    spinner.finish();
    let sandbox = sandbox?;
    if json {
        print_json(&sandbox)?;
    } else {
        let memory = match sandbox.memory_preserved {
            Some(true) => "memory kept: processes continue on resume",
            _ => "files kept, memory not kept: resume starts it again",
        };
        println!("{} suspended ({memory})", sandbox.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren update ID [--timeout S] [--idle-timeout S] [--on-timeout A]
/// [--auto-resume BOOL]`.
pub async fn update(client: &Client, args: &UpdateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let req = args.to_request();
    if req == UpdateSandboxRequest::default() {
        anyhow::bail!(
            "nothing to change; give --timeout, --idle-timeout, --on-timeout or --auto-resume"
        );
    }
    let sandbox = client.update_sandbox(&args.id, &req).await?;
    if json {
        print_json(&sandbox)?;
    } else {
        let expires = sandbox
            .expires_at
            .map(|at| at.to_rfc3339())
            .unwrap_or_else(|| "never".to_owned());
        let idle = sandbox
            .idle_timeout_secs
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "none".to_owned());
        println!(
            "{}: expires {expires}, idle timeout {idle}, on timeout {}, auto-resume {}",
            sandbox.id,
            sandbox.on_timeout.as_str(),
            sandbox.auto_resume
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(event: &SandboxEvent, json: bool) -> anyhow::Result<()> {
    if json {
        // One JSON object per line, so a follower can read them as they come.
        println!("{}", serde_json::to_string(event)?);
    } else {
        let data = match &event.data {
            serde_json::Value::Object(map) if map.is_empty() => String::new(),
            serde_json::Value::Null => String::new(),
            other => format!(" {other}"),
        };
        println!(
            "{:>6}  {}  {}{data}",
            event.id,
            event
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event.kind
        );
    }
    Ok(())
}

/// `warren events ID [--follow]`: the sandbox's events, oldest first; with
/// --follow, then live ones until it is deleted. With --json: the list, or
/// with --follow one event object per line.
pub async fn events(
    client: &Client,
    id: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !follow {
        let events = client.sandbox_events(id, 0).await?;
        if json {
            print_json(&SandboxEventList { events })?;
        } else {
            for event in &events {
                print_event(event, false)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = client.follow_sandbox_events(id, 0).await?;
    while let Some(event) = stream.next().await? {
        print_event(&event, json)?;
    }
    Ok(ExitCode::SUCCESS)
}
