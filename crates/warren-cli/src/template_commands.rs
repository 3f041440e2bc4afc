//! `template create|ls|inspect|rm` and `pool create|ls|rm`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use clap::Subcommand;
use warren_client::{
    Client, CreateTemplateRequest, Resources, Template, TemplateBuildEvent, TemplateState,
};

use crate::args::parse_key_value;
use crate::output::{age, print_json, render_table};

/// `warren template …`.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template: run the setup commands once (as root, in a builder
    /// sandbox), showing their output, and snapshot the result. The same
    /// recipe again reuses the built template; a changed one rebuilds it.
    Create {
        /// Template name (lowercase letters, digits and '-').
        name: String,
        /// Base image (default `host`).
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// A shell command to run (repeatable, run in order).
        #[arg(long = "setup", short = 's', value_name = "CMD")]
        setup: Vec<String>,
        /// Environment variable for the setup and every sandbox (repeatable).
        #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Default working directory.
        #[arg(long, value_name = "DIR")]
        workdir: Option<String>,
        /// CPU quota in cores.
        #[arg(long, value_name = "N")]
        cpus: Option<f64>,
        /// Memory limit in MiB.
        #[arg(long, value_name = "MIB")]
        memory: Option<i64>,
        /// Maximum number of processes and threads.
        #[arg(long, value_name = "N")]
        pids: Option<i64>,
        /// Disk space in MiB.
        #[arg(long, value_name = "MIB")]
        disk: Option<i64>,
        // --network/--allow-out/--deny-out: the builder sandbox's policy
        // (sandboxes created from the template get the daemon's default).
        #[command(flatten)]
        network: Box<crate::network_commands::NetworkCreateOptions>,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls,
    /// Show everything about one template, as JSON.
    Inspect {
        /// Template name.
        name: String,
    },
    /// Delete a template (and its snapshot, unless sandboxes use it).
    #[command(alias = "delete")]
    Rm {
        /// Template name.
        name: String,
    },
}

/// `warren pool …`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Keep SIZE sandboxes of a template created and ready; `warren create
    /// --template T --from-pool` claims one.
    Create {
        /// Template name.
        template: String,
        /// How many ready sandboxes to keep (1 to 100).
        #[arg(long, value_name = "N")]
        size: i64,
    },
    /// List warm pools.
    #[command(alias = "list")]
    Ls,
    /// Remove a warm pool and its idle sandboxes.
    #[command(alias = "delete")]
    Rm {
        /// Template name.
        template: String,
    },
}

/// Runs one `warren template …` command.
pub async fn template(
    client: &Client,
    command: &TemplateCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        TemplateCommand::Create {
            name,
            image,
            setup,
            env,
            workdir,
            cpus,
            memory,
            pids,
            disk,
            network,
        } => {
            let resources = Resources {
                cpus: *cpus,
                memory_mb: *memory,
                pids_limit: *pids,
                disk_mb: *disk,
            };
            let req = CreateTemplateRequest {
                name: name.clone(),
                image: image.clone(),
                setup: setup.clone(),
                env: (!env.is_empty()).then(|| env.iter().cloned().collect()),
                resources: (resources != Resources::default()).then_some(resources),
                workdir: workdir.clone(),
                network: network.to_policy(),
            };
            create(client, &req, json).await
        }
        TemplateCommand::Ls => {
            let templates = client.list_templates().await?;
            if json {
                print_json(&templates)?;
            } else {
                print!("{}", template_table(&templates));
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Inspect { name } => {
            print_json(&client.get_template(name).await?)?;
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Rm { name } => {
            let removed = client.delete_template(name).await?;
            if json {
                print_json(&removed)?;
            } else {
                match (&removed.snapshot, &removed.snapshot_kept_because) {
                    (Some(snapshot), Some(why)) => {
                        eprintln!("kept snapshot {snapshot}: {}", why.replace('\n', " "))
                    }
                    (Some(snapshot), None) => eprintln!("deleted snapshot {snapshot}"),
                    _ => {}
                }
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn state_name(state: TemplateState) -> &'static str {
    match state {
        TemplateState::Building => "building",
        TemplateState::Ready => "ready",
        TemplateState::Failed => "failed",
    }
}

fn template_table(templates: &[Template]) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                state_name(t.state).to_owned(),
                t.snapshot.clone().unwrap_or_else(|| "-".to_owned()),
                t.recipe_hash.chars().take(12).collect(),
                t.recipe.setup.len().to_string(),
                age(t.updated_at, now),
            ]
        })
        .collect();
    render_table(
        &["NAME", "STATE", "SNAPSHOT", "RECIPE", "STEPS", "UPDATED"],
        &rows,
    )
}

/// `warren template create`: streams the build. Text: `step i/n: cmd`
/// lines and the commands' output as it comes, then the name on stdout;
/// JSON: the NDJSON events. A failure exits non-zero with one line on
/// stderr naming the failing command and why (with `--json` too).
async fn create(
    client: &Client,
    req: &CreateTemplateRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let total = req.setup.len();
    let mut events = client.create_template(req).await?;
    while let Some(event) = events.next().await? {
        if json {
            let line = serde_json::to_string(&event)?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
        }
        match event {
            TemplateBuildEvent::Step { index, command } => {
                if !json {
                    eprintln!("step {}/{total}: {command}", index + 1);
                }
            }
            TemplateBuildEvent::Output { stream, data } => {
                if !json {
                    if stream == "stderr" {
                        let mut err = std::io::stderr().lock();
                        err.write_all(data.as_bytes())?;
                        err.flush()?;
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(data.as_bytes())?;
                        out.flush()?;
                    }
                }
            }
            TemplateBuildEvent::Reused { template } => {
                if !json {
                    eprintln!(
                        "template {} is up to date (recipe unchanged; snapshot {})",
                        template.name,
                        template.snapshot.as_deref().unwrap_or("-")
                    );
                    println!("{}", template.name);
                }
                return Ok(ExitCode::SUCCESS);
            }
            TemplateBuildEvent::Done { template } => {
                if !json {
                    eprintln!(
                        "template {} is ready (snapshot {})",
                        template.name,
                        template.snapshot.as_deref().unwrap_or("-")
                    );
                    println!("{}", template.name);
                }
                return Ok(ExitCode::SUCCESS);
            }
            TemplateBuildEvent::Failed {
                command,
                exit_code,
                message,
            } => {
                // The message names the command, its exit code and the end
                // of its output; say so when it does not.
                let line = match (command, exit_code) {
                    (Some(command), Some(code)) if !message.contains(&command) => {
                        format!("setup command {command:?} exited with code {code}: {message}")
                    }
                    _ => message,
                };
                let line = format!(
                    "template {} failed: {}",
                    req.name,
                    line.split_whitespace().collect::<Vec<_>>().join(" ")
                );
                if json {
                    // The `failed` event is on stdout; the one line goes
                    // to stderr as for every other error.
                    eprintln!("error: {line}");
                    return Ok(ExitCode::FAILURE);
                }
                bail!("{line}");
            }
        }
    }
    bail!("the build of template {} ended without a result", req.name)
}

/// Runs one `warren pool …` command.
pub async fn pool(client: &Client, command: &PoolCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        PoolCommand::Create { template, size } => {
            let pool = client.create_pool(template, *size).await?;
            if json {
                print_json(&pool)?;
            } else {
                eprintln!(
                    "pool of {} ready sandboxes of template {} created; it fills in the background",
                    pool.size, pool.template
                );
                println!("{}", pool.template);
            }
        }
        PoolCommand::Ls => {
            let pools = client.list_pools().await?;
            if json {
                print_json(&pools)?;
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.template.clone(),
                            p.size.to_string(),
                            p.ready.to_string(),
                            age(p.created_at, now),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render_table(&["TEMPLATE", "SIZE", "READY", "CREATED"], &rows)
                );
            }
        }
        PoolCommand::Rm { template } => {
            client.delete_pool(template).await?;
            if json {
                print_json(&serde_json::json!({ "template": template, "removed": true }))?;
            } else {
                println!("{template}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
