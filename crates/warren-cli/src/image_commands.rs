//! `image pull`, `image import`, `image ls`, `image inspect` and `image rm`.

use std::io::BufRead;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::AsyncRead;
use warren_client::{Client, Image, PullEvent, PullImageRequest};

use crate::args::ImageCommand;
use crate::output::{age, print_json, render_table};
use crate::transfer_progress::{human_bytes, short_digest, ByteBar, ByteCounter, PullDisplay};

/// Runs one `warren image …` command.
pub async fn run(client: &Client, command: &ImageCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Pull {
            reference,
            insecure,
            username,
            password_stdin,
        } => {
            pull(
                client,
                reference,
                *insecure,
                username.clone(),
                *password_stdin,
                json,
            )
            .await
        }
        ImageCommand::Import { file, name } => import(client, file, name, json).await,
        ImageCommand::Ls => list(client, json).await,
        ImageCommand::Inspect { name } => {
            print_json(&client.get_image(name).await?)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { name } => remove(client, name, json).await,
    }
}

/// The first line of standard input, without its line ending.
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("--password-stdin: standard input holds no password");
    }
    Ok(password)
}

/// `warren image pull REF`: shows progress, prints the image name (JSON:
/// the image).
async fn pull(
    client: &Client,
    reference: &str,
    insecure: bool,
    username: Option<String>,
    password_stdin: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let password = password_stdin.then(read_password_line).transpose()?;
    if password.is_some() && username.is_none() {
        bail!("--password-stdin needs --username");
    }
    let request = PullImageRequest {
        reference: reference.to_owned(),
        insecure: insecure.then_some(true),
        username,
        password,
    };
    let mut display = PullDisplay::new(json);
    let mut events = client.pull_image_with_progress(&request).await?;
    let image = loop {
        match events.next().await? {
            Some(PullEvent::Progress(progress)) => display.update(&progress),
            Some(PullEvent::Done(image)) => break *image,
            None => bail!("the pull of {reference} ended without a result"),
        }
    };
    display.finish();
    print_image_result(&image, "pulled", json)
}

fn print_image_result(image: &Image, verb: &str, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(image)?;
    } else {
        eprintln!(
            "{verb} {} ({}, {})",
            image.name,
            image.digest.as_deref().unwrap_or("-"),
            human_bytes(image.size)
        );
        println!("{}", image.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren image import FILE --name NAME`: streams the file with a byte
/// bar, prints the image name (JSON: the image).
async fn import(client: &Client, file: &Path, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let counter = ByteCounter::default();
    let (reader, size, label): (Pin<Box<dyn AsyncRead + Send>>, Option<u64>, String) =
        if file == Path::new("-") {
            (Box::pin(tokio::io::stdin()), None, "importing".to_owned())
        } else {
            let opened = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let meta = opened
                .metadata()
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            if !meta.is_file() {
                bail!("{} is not a file", file.display());
            }
            let label = format!(
                "importing {}",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            (Box::pin(opened), Some(meta.len()), label)
        };
    let reader = counter.counted(reader);
    let bar = ByteBar::start(label, counter, size, "unpacking", json);
    let result = client.import_image(name, reader, size).await;
    bar.finish();
    print_image_result(&result?, "imported", json)
}

/// "12 seconds ago", … from an RFC 3339 time; `-` when absent or unreadable.
fn created_age(created: Option<&str>, now: DateTime<Utc>) -> String {
    created
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map_or_else(|| "-".to_owned(), |t| age(t.with_timezone(&Utc), now))
}

fn image_table(images: &[Image], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            if image.builtin {
                return vec![
                    image.name.clone(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "built in".to_owned(),
                ];
            }
            vec![
                image.name.clone(),
                image
                    .digest
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |d| short_digest(d).to_owned()),
                human_bytes(image.size),
                created_age(image.created.as_deref(), now),
            ]
        })
        .collect();
    render_table(&["NAME", "DIGEST", "SIZE", "CREATED"], &rows)
}

/// `warren image ls`: a table, or the JSON list.
async fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let images = client.list_images().await?;
    if json {
        print_json(&images)?;
    } else {
        print!("{}", image_table(&images, Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren image rm --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Removed<'a> {
    name: &'a str,
    layers_removed: u64,
    bytes_freed: u64,
}

/// `warren image rm NAME`: says what was freed.
async fn remove(client: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let removed = client.delete_image(name).await?;
    if json {
        print_json(&Removed {
            name,
            layers_removed: removed.layers_removed,
            bytes_freed: removed.bytes_freed,
        })?;
    } else {
        println!(
            "{name}: removed {} layer{}, freed {}",
            removed.layers_removed,
            if removed.layers_removed == 1 { "" } else { "s" },
            human_bytes(removed.bytes_freed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_client::{ImageConfig, ImageLayer};

    fn image(name: &str, builtin: bool, created: Option<String>) -> Image {
        Image {
            name: name.into(),
            builtin,
            digest: (!builtin).then(|| format!("sha256:{}", "ab".repeat(32))),
            config_digest: None,
            size: if builtin { 0 } else { 3 * 1024 * 1024 },
            layers: if builtin {
                vec![]
            } else {
                vec![ImageLayer {
                    digest: "sha256:cd".into(),
                    diff_id: "sha256:ef".into(),
                    size: 3 * 1024 * 1024,
                }]
            },
            architecture: "amd64".into(),
            os: "linux".into(),
            created,
            config: ImageConfig::default(),
            stored_at: None,
        }
    }

    #[test]
    fn table_shows_short_digests_sizes_and_ages() {
        let now = Utc::now();
        let created = (now - chrono::Duration::seconds(600)).to_rfc3339();
        let table = image_table(
            &[
                image("host", true, None),
                image("reg/busybox:v1", false, Some(created)),
                image("plain:latest", false, None),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("NAME "), "{}", lines[0]);
        assert!(lines[1].starts_with("host ") && lines[1].ends_with("built in"));
        assert!(lines[2].contains(" abababababab "), "{}", lines[2]);
        assert!(lines[2].contains("3.0 MiB"), "{}", lines[2]);
        assert!(lines[2].ends_with("10 minutes ago"), "{}", lines[2]);
        assert!(lines[3].ends_with(" -"), "{}", lines[3]);
    }

    #[test]
    fn image_commands_parse() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            crate::args::Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))
        };
        let cli = parse(&[
            "image",
            "pull",
            "r/x:1",
            "--insecure",
            "-u",
            "me",
            "--password-stdin",
        ])
        .unwrap();
        let crate::args::Command::Image(ImageCommand::Pull {
            reference,
            insecure,
            username,
            password_stdin,
        }) = cli.command
        else {
            panic!("expected image pull");
        };
        assert_eq!(reference, "r/x:1");
        assert!(insecure && password_stdin);
        assert_eq!(username.as_deref(), Some("me"));
        let cli = parse(&["--json", "image", "import", "a.tar", "--name", "a:1"]).unwrap();
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            crate::args::Command::Image(ImageCommand::Import { ref name, .. }) if name == "a:1"
        ));
        assert!(
            parse(&["image", "import", "a.tar"]).is_err(),
            "--name is required"
        );
        assert!(parse(&["image", "list", "--json"]).is_ok());
        assert!(parse(&["image", "rm", "a:1"]).is_ok());
    }

    #[tokio::test]
    async fn counting_reader_counts_every_byte() {
        use tokio::io::AsyncReadExt;
        let counter = ByteCounter::default();
        let mut reader = counter.counted(std::io::Cursor::new(vec![7u8; 100_000]));
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).await.unwrap();
        assert_eq!(counter.get(), 100_000);
    }
}
