//! `warren keys`: API keys, managed directly in the data directory's store
//! (no daemon needed, so the first key can be made before `serve --listen`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_api::ApiKeyScope;
use warren_store::Store;

use crate::args::KeysCommand;
use crate::output::{age, print_json, render_table};

/// An API key as `keys ls --json` and `keys create --json` print it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyJson {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    scopes: Vec<ApiKeyScope>,
    created_at: DateTime<Utc>,
}

/// Parses `admin`, `sandboxes:write` or `sandboxes:read`.
pub fn parse_key_scope(s: &str) -> Result<ApiKeyScope, String> {
    ApiKeyScope::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of admin, sandboxes:write, sandboxes:read"))
}

fn scopes_text(scopes: &[ApiKeyScope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one `keys` subcommand against the store in `data_dir`.
pub async fn run(data_dir: &Path, command: &KeysCommand, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open(data_dir)
        .await
        .with_context(|| format!("cannot open the Warren store in {}", data_dir.display()))?;
    match command {
        KeysCommand::Create { name, scopes } => {
            let key = store.create_api_key_with_scopes(name, scopes).await?;
            if json {
                print_json(&KeyJson {
                    id: key.id,
                    name: key.name,
                    secret: Some(key.secret),
                    scopes: key.scopes,
                    created_at: key.created_at,
                })?;
            } else {
                println!("{}", key.secret);
                eprintln!(
                    "warren: created API key {} ({}, scopes {}); the secret above is shown only once",
                    key.name,
                    key.id,
                    scopes_text(&key.scopes)
                );
            }
        }
        KeysCommand::Ls => {
            let keys = store.list_api_keys().await?;
            if json {
                let keys: Vec<KeyJson> = keys
                    .into_iter()
                    .map(|k| KeyJson {
                        id: k.id,
                        name: k.name,
                        secret: None,
                        scopes: k.scopes,
                        created_at: k.created_at,
                    })
                    .collect();
                print_json(&keys)?;
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = keys
                    .into_iter()
                    .map(|k| vec![k.id, k.name, scopes_text(&k.scopes), age(k.created_at, now)])
                    .collect();
                print!(
                    "{}",
                    render_table(&["ID", "NAME", "SCOPES", "CREATED"], &rows)
                );
            }
        }
        KeysCommand::Rm { key } => {
            if !store.delete_api_key(key).await? {
                anyhow::bail!("no API key with id or name {key:?}");
            }
            if json {
                print_json(&serde_json::json!({ "deleted": key }))?;
            } else {
                println!("{key}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
