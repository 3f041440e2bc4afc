//! `create`, `ls`, `inspect`, `pause`, `resume` and `rm`.

use std::future::Future;
use std::process::ExitCode;

use serde::Serialize;
use warren_api::ErrorDetail;
use warren_client::{Client, ClientError, CreateSandboxRequest, Sandbox};

use crate::args::{CreateArgs, CreateOptions, ListArgs};
use crate::output::{age, error_line, print_json, render_table};
use crate::spinner::Spinner;

/// `warren create`: prints the new sandbox's id (JSON: the sandbox).
pub async fn create(client: &Client, args: &CreateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let sandbox = create_from_request(client, &args.to_request()?, json).await?;
    if json {
        print_json(&sandbox)?;
    } else {
        println!("{}", sandbox.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a sandbox with a spinner on interactive terminals.
pub async fn create_sandbox(
    client: &Client,
    opts: &CreateOptions,
    json: bool,
) -> anyhow::Result<Sandbox> {
    create_from_request(client, &opts.to_request()?, json).await
}

async fn create_from_request(
    client: &Client,
    request: &CreateSandboxRequest,
    json: bool,
) -> anyhow::Result<Sandbox> {
    let spinner = Spinner::start("Creating sandbox", json);
    let result = client.create_sandbox(request).await;
    spinner.finish();
    Ok(result?)
}

/// `warren ls`: a table, or the JSON list.
pub async fn list(client: &Client, args: &ListArgs, json: bool) -> anyhow::Result<ExitCode> {
    let sandboxes = client.list_sandboxes(args.state, &args.labels).await?;
    if json {
        print_json(&sandboxes)?;
    } else {
        print!("{}", sandbox_table(&sandboxes, chrono::Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

fn sandbox_table(sandboxes: &[Sandbox], now: chrono::DateTime<chrono::Utc>) -> String {
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".to_owned()),
                s.state.as_str().to_owned(),
                s.image.clone(),
                age(s.created_at, now),
            ]
        })
        .collect();
    render_table(&["ID", "NAME", "STATE", "IMAGE", "CREATED"], &rows)
}

/// `warren inspect ID`: the sandbox as pretty JSON.
pub async fn inspect(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let sandbox = client.get_sandbox(id).await?;
    print_json(&sandbox)?;
    Ok(ExitCode::SUCCESS)
}

/// `warren pause ID`: prints the id (JSON: the sandbox, now paused).
pub async fn pause(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let sandbox = client.pause_sandbox(id).await?;
    print_sandbox_or_id(&sandbox, json)
}

/// `warren resume ID`: prints the id (JSON: the sandbox, running again).
/// Resuming a suspended sandbox starts it again (or restores its memory
/// checkpoint), which takes longer than a thaw: a spinner shows it.
pub async fn resume(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let spinner = Spinner::start("Resuming sandbox", json);
    let result = client.resume_sandbox(id).await;
    spinner.finish();
    print_sandbox_or_id(&result?, json)
}

fn print_sandbox_or_id(sandbox: &Sandbox, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(sandbox)?;
    } else {
        println!("{}", sandbox.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `warren rm --json` (and of `warren snapshots rm --json`).
#[derive(Debug, Serialize)]
struct RemoveOutcome {
    id: String,
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

/// `warren rm ID…`: deletes each; reports failures and goes on with the rest.
pub async fn remove(client: &Client, ids: &[String], json: bool) -> anyhow::Result<ExitCode> {
    remove_each(ids, json, |id| client.delete_sandbox(id)).await
}

/// Deletes each id with `delete`, printing the id (or, on failure, an error
/// line) as it goes; with `json`, prints one outcome per id at the end
/// instead. Fails at once if the daemon cannot be reached, else goes on past
/// failures and exits with failure if any delete failed.
pub(crate) async fn remove_each<'a, F, Fut>(
    ids: &'a [String],
    json: bool,
    mut delete: F,
) -> anyhow::Result<ExitCode>
where
    F: FnMut(&'a str) -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    let mut outcomes = Vec::with_capacity(ids.len());
    for id in ids {
        match delete(id).await {
            Ok(()) => {
                if !json {
                    println!("{id}");
                }
                outcomes.push(RemoveOutcome {
                    id: id.clone(),
                    deleted: true,
                    error: None,
                });
            }
            // Without a daemon, every other id would fail the same way.
            Err(err) if err.is_connect() => return Err(err.into()),
            Err(err) => {
                let error = error_detail(&err);
                if !json {
                    eprintln!("error: {id}: {}", error_line(&anyhow::Error::new(err)));
                }
                outcomes.push(RemoveOutcome {
                    id: id.clone(),
                    deleted: false,
                    error: Some(error),
                });
            }
        }
    }
    if json {
        print_json(&outcomes)?;
    }
    let all_deleted = outcomes.iter().all(|o| o.deleted);
    Ok(if all_deleted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn error_detail(err: &ClientError) -> ErrorDetail {
    match err {
        ClientError::Api { code, message, .. } => ErrorDetail {
            code: code.clone(),
            message: message.clone(),
        },
        other => ErrorDetail {
            code: "client_error".to_owned(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use warren_client::{ResolvedResources, SandboxState};

    fn sandbox(id: &str, name: Option<&str>, secs_ago: i64, now: DateTime<Utc>) -> Sandbox {
        Sandbox {
            id: id.into(),
            name: name.map(Into::into),
            state: SandboxState::Running,
            image: "host".into(),
            driver: "namespace".into(),
            resources: ResolvedResources::default(),
            env: Default::default(),
            workdir: "/workspace".into(),
            metadata: Default::default(),
            created_at: now - chrono::Duration::seconds(secs_ago),
            updated_at: now,
            failure_reason: None,
            user: None,
            snapshot: None,
            template: None,
            timeout_secs: None,
            idle_timeout_secs: None,
            on_timeout: Default::default(),
            auto_resume: false,
            expires_at: None,
            last_activity_at: None,
            memory_preserved: None,
            network: Default::default(),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn table_shows_dash_for_missing_name() {
        let now = chrono::Utc::now();
        let table = sandbox_table(
            &[
                sandbox("aaaaaaaaaaaaaaaaaaaa", None, 30, now),
                sandbox("bbbbbbbbbbbbbbbbbbbb", Some("agent"), 600, now),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID "));
        assert!(lines[0].ends_with("CREATED"));
        assert!(lines[1].contains(" -  "), "{}", lines[1]);
        assert!(lines[1].contains("running"));
        assert!(lines[2].contains("agent"));
        assert!(lines[2].ends_with("10 minutes ago"), "{}", lines[2]);
    }

    #[test]
    fn api_errors_keep_their_code_in_json() {
        let err = ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "no sandbox with id x".into(),
        };
        let detail = error_detail(&err);
        assert_eq!(detail.code, "not_found");
        assert_eq!(detail.message, "no sandbox with id x");
    }
}
