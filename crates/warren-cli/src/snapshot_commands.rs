//! `snapshot`, `snapshots ls|rm` and `fork`.

use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;
use warren_client::{Client, CreateSnapshotRequest, ForkRequest};

use crate::output::{age, print_json, render_table};
use crate::sandbox_commands::remove_each;
use crate::spinner::Spinner;
use crate::transfer_progress::human_bytes;

/// `warren snapshots …`.
#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots, newest first, with the sandboxes that use them.
    #[command(alias = "list")]
    Ls,
    /// Delete snapshots (refused while sandboxes, snapshots or templates
    /// use them).
    #[command(alias = "delete")]
    Rm {
        /// Snapshot ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

/// `warren snapshot ID [--name N]`: prints the snapshot id (JSON: the snapshot).
pub async fn snapshot(
    client: &Client,
    id: &str,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let spinner = Spinner::start(&format!("capturing the files of {id}"), json);
    let result = client
        .create_snapshot(id, &CreateSnapshotRequest { name })
        .await;
    spinner.finish();
    let snapshot = result?;
    if json {
        print_json(&snapshot)?;
    } else {
        eprintln!(
            "captured {} of files from {id} ({} layer{})",
            human_bytes(snapshot.size_bytes),
            snapshot.layer_count,
            if snapshot.layer_count == 1 { "" } else { "s" }
        );
        println!("{}", snapshot.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one `warren snapshots …` command.
pub async fn snapshots(
    client: &Client,
    command: &SnapshotsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotsCommand::Ls => list(client, json).await,
        SnapshotsCommand::Rm { ids } => remove(client, ids, json).await,
    }
}

async fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let snapshots = client.list_snapshots().await?;
    if json {
        print_json(&snapshots)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                serde_json::to_value(s.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                s.sandbox_id.clone(),
                s.image.clone(),
                human_bytes(s.size_bytes),
                age(s.created_at, now),
                if s.used_by.is_empty() {
                    "-".into()
                } else {
                    s.used_by.join(",")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &["ID", "NAME", "KIND", "FROM", "IMAGE", "SIZE", "CREATED", "USED BY"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn remove(client: &Client, ids: &[String], json: bool) -> anyhow::Result<ExitCode> {
    remove_each(ids, json, |id| client.delete_snapshot(id)).await
}

/// `warren fork ID -n N [--memory]`: prints the new sandboxes' ids, one a
/// line (JSON: the fork result).
pub async fn fork(
    client: &Client,
    id: &str,
    count: i64,
    memory: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let what = if memory { "files and memory" } else { "files" };
    let spinner = Spinner::start(
        &format!(
            "forking {id} into {count} sandbox{} ({what})",
            if count == 1 { "" } else { "es" }
        ),
        json,
    );
    let result = client
        .fork_sandbox(
            id,
            &ForkRequest {
                count: Some(count),
                memory: memory.then_some(true),
                metadata: None,
            },
        )
        .await;
    spinner.finish();
    let forked = result?;
    if json {
        print_json(&forked)?;
    } else {
        eprintln!(
            "forked {id} into {} sandbox{} from snapshot {}",
            forked.sandboxes.len(),
            if forked.sandboxes.len() == 1 {
                ""
            } else {
                "es"
            },
            forked.snapshot
        );
        for sandbox in &forked.sandboxes {
            println!("{}", sandbox.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
