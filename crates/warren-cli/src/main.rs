//! `warren`: the command-line interface to Warren, and `warren serve`.

mod access_commands;
mod args;
mod daemon_autostart;
mod exec_commands;
mod file_copy;
mod files_commands;
mod image_commands;
mod keys;
mod lifecycle_commands;
mod network_commands;
mod output;
mod port_commands;
mod process_commands;
mod sandbox_commands;
mod serve;
mod shell;
mod snapshot_commands;
mod spinner;
mod template_commands;
mod transfer_progress;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::{Cli, Command, GlobalArgs};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    let runtime = match &cli.command {
        // The daemon serves many clients at once.
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        // Client commands do one thing at a time; one thread starts faster
        // and is what the spinner relies on.
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", output::error_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { global, command } = cli;
    let json = global.json;
    match command {
        Command::Serve(args) => serve::run(&global, &args).await,
        Command::Keys(keys_command) => keys::run(&global.data_dir, &keys_command, json).await,
        Command::Create(opts) => {
            let client = connect(&global).await?;
            sandbox_commands::create(&client, &opts, json).await
        }
        Command::Ls(args) => {
            let client = connect(&global).await?;
            sandbox_commands::list(&client, &args, json).await
        }
        Command::Inspect { id } => {
            let client = connect(&global).await?;
            sandbox_commands::inspect(&client, &id).await
        }
        Command::Pause { id } => {
            let client = connect(&global).await?;
            sandbox_commands::pause(&client, &id, json).await
        }
        Command::Resume { id } => {
            let client = connect(&global).await?;
            sandbox_commands::resume(&client, &id, json).await
        }
        Command::Suspend { id } => {
            let client = connect(&global).await?;
            lifecycle_commands::suspend(&client, &id, json).await
        }
        Command::Update(args) => {
            let client = connect(&global).await?;
            lifecycle_commands::update(&client, &args, json).await
        }
        Command::Events { id, follow } => {
            let client = connect(&global).await?;
            lifecycle_commands::events(&client, &id, follow, json).await
        }
        Command::Rm { ids } => {
            let client = connect(&global).await?;
            sandbox_commands::remove(&client, &ids, json).await
        }
        Command::Exec(args) => {
            let client = connect(&global).await?;
            if args.detach {
                process_commands::start(&client, &args, json).await
            } else if args.tty {
                shell::exec_tty(&client, &args).await
            } else {
                exec_commands::exec(&client, &args, json).await
            }
        }
        Command::Shell { user, id, command } => {
            let client = connect(&global).await?;
            shell::shell(&client, &id, user, command).await
        }
        Command::Ps { id } => {
            let client = connect(&global).await?;
            process_commands::list(&client, &id, json).await
        }
        Command::Logs { id, pid, follow } => {
            let client = connect(&global).await?;
            process_commands::logs(&client, &id, pid, follow).await
        }
        Command::Kill { id, pid, signal } => {
            let client = connect(&global).await?;
            process_commands::kill(&client, &id, pid, &signal).await
        }
        Command::Run(args) => {
            let client = connect(&global).await?;
            exec_commands::run(&client, &args, json).await
        }
        Command::Image(image_command) => {
            let client = connect(&global).await?;
            image_commands::run(&client, &image_command, json).await
        }
        Command::Cp(args) => {
            let client = connect(&global).await?;
            file_copy::cp(&client, &args, json).await
        }
        Command::Files(files_command) => {
            let client = connect(&global).await?;
            files_commands::run(&client, &files_command, json).await
        }
        Command::Diff(args) => {
            let client = connect(&global).await?;
            files_commands::diff(&client, &args, json).await
        }
        Command::Snapshot { id, name } => {
            let client = connect(&global).await?;
            snapshot_commands::snapshot(&client, &id, name, json).await
        }
        Command::Snapshots(command) => {
            let client = connect(&global).await?;
            snapshot_commands::snapshots(&client, &command, json).await
        }
        Command::Fork { id, count, memory } => {
            let client = connect(&global).await?;
            snapshot_commands::fork(&client, &id, count, memory, json).await
        }
        Command::Template(template_command) => {
            let client = connect(&global).await?;
            template_commands::template(&client, &template_command, json).await
        }
        Command::Pool(pool_command) => {
            let client = connect(&global).await?;
            template_commands::pool(&client, &pool_command, json).await
        }
        Command::Network(args) => {
            let client = connect(&global).await?;
            network_commands::run(&client, &args, json).await
        }
        Command::Ports(args) => {
            let client = connect(&global).await?;
            port_commands::ports(&client, &args, json).await
        }
        Command::PortForward(args) => {
            let client = connect(&global).await?;
            port_commands::port_forward(&client, &args, json).await
        }
        Command::Token(args) => {
            let client = connect(&global).await?;
            access_commands::token(&client, &args, json).await
        }
        Command::Secret(command) => {
            let client = connect(&global).await?;
            access_commands::secret(&client, &command, json).await
        }
    }
}

/// The client for the global options, with a local daemon started if needed.
async fn connect(global: &GlobalArgs) -> anyhow::Result<warren_client::Client> {
    let client = global.client()?;
    daemon_autostart::ensure_daemon(client, &global.data_dir, !global.no_autostart).await
}

/// Prints a clap error: help and version as usual; a rejected value as the
/// one line `error: …`; anything else (missing arguments, typos) with clap's
/// usage hints.
fn clap_exit(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let message = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        _ => {
            let _ = err.print();
            ExitCode::from(2)
        }
    }
}
