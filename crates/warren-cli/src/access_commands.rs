//! `warren token`, `warren secret set|ls|rm`, `--secret` at create, and the
//! daemon's rate-limit flags.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use warren_api::TokenScope;

use crate::output::{age, print_json, render_table};

/// `warren serve` access flags.
#[derive(Debug, Clone, Default, Args)]
pub struct AccessServeArgs {
    /// Sandbox creates (each fork child counts) allowed per API key per
    /// minute; 0 turns the limit off. Local callers (the unix socket
    /// without a key) are not limited unless --limit-local is given.
    #[arg(long, env = "WARREN_CREATE_RATE_LIMIT", value_name = "N", default_value_t = warren_server::DEFAULT_CREATES_PER_MINUTE)]
    pub create_rate_limit: u32,
    /// Apply --create-rate-limit to local callers too.
    #[arg(long)]
    pub limit_local: bool,
}

impl AccessServeArgs {
    /// The server's settings.
    pub fn settings(&self) -> warren_server::AccessSettings {
        warren_server::AccessSettings {
            creates_per_minute: Some(self.create_rate_limit),
            limit_local: self.limit_local,
        }
    }
}

/// `--secret NAME` of `create` and `run`.
#[derive(Debug, Clone, Default, Args)]
pub struct AccessCreateOptions {
    /// Put this secret (set with `warren secret set NAME`) in the sandbox's
    /// environment as $NAME (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    pub secret: Vec<String>,
}

impl AccessCreateOptions {
    /// Secret names to inject, each once, in the order given.
    pub fn secrets(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.secret.len());
        for name in &self.secret {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// Parses `read`, `exec` or `ports`.
fn parse_token_scope(s: &str) -> Result<TokenScope, String> {
    match s {
        "read" => Ok(TokenScope::Read),
        "exec" => Ok(TokenScope::Exec),
        "ports" => Ok(TokenScope::Ports),
        other => Err(format!("{other:?} is not one of read, exec, ports")),
    }
}

/// `warren token ID --scope S --ttl SECS`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Sandbox id.
    pub id: String,
    /// What the token allows: read (the sandbox, its files, processes and
    /// events), exec (read plus commands, processes and file writes) or
    /// ports (its port proxy and TCP tunnel).
    #[arg(long, value_name = "SCOPE", value_parser = parse_token_scope)]
    pub scope: TokenScope,
    /// Lifetime in seconds, 1..=86400 (default 3600).
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<i64>,
}

/// `warren secret …`.
#[derive(Debug, Clone, Subcommand)]
pub enum SecretCommand {
    /// Create a secret or replace its value. The value comes from --value,
    /// else from standard input (piped, or with --from-stdin; one trailing
    /// newline is dropped), else from a prompt that does not echo.
    Set {
        /// The secret's name, which is also its environment variable name.
        name: String,
        /// The value (visible in the process list and shell history; prefer
        /// standard input).
        #[arg(long, value_name = "VALUE", conflicts_with = "from_stdin")]
        value: Option<String>,
        /// Read the value from standard input even when it is a terminal.
        #[arg(long)]
        from_stdin: bool,
    },
    /// List secret names (never their values).
    #[command(alias = "list")]
    Ls,
    /// Delete a secret.
    #[command(alias = "delete")]
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// Runs `warren token`.
pub async fn token(
    client: &warren_client::Client,
    args: &TokenArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let token = client.create_token(&args.id, args.scope, args.ttl).await?;
    if json {
        print_json(&token)?;
    } else {
        println!("{}", token.token);
        eprintln!(
            "warren: {} token for sandbox {}, valid until {}",
            token.scope.as_str(),
            token.sandbox_id,
            token.expires_at.to_rfc3339()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Drops one trailing `\n` or `\r\n`.
fn strip_newline(mut value: String) -> String {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    value
}

/// Reads one line from the terminal on stdin without echoing it.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
    let mut original: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into a live termios.
    let have_termios = unsafe { libc::tcgetattr(0, &mut original) } == 0;
    if have_termios {
        let mut quiet = original;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: tcsetattr reads a live termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if have_termios {
        // SAFETY: tcsetattr reads a live termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &original) };
    }
    eprintln!();
    read.context("reading the secret value")?;
    Ok(strip_newline(line))
}

/// The value of `secret set`, from the flag, stdin or a prompt.
fn secret_value(name: &str, value: Option<&str>, from_stdin: bool) -> anyhow::Result<String> {
    if let Some(value) = value {
        return Ok(value.to_owned());
    }
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut value = String::new();
        std::io::stdin()
            .read_to_string(&mut value)
            .context("reading the secret value from standard input")?;
        return Ok(strip_newline(value));
    }
    prompt_hidden(&format!("value of {name}: "))
}

/// Runs `warren secret …`.
pub async fn secret(
    client: &warren_client::Client,
    command: &SecretCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Set {
            name,
            value,
            from_stdin,
        } => {
            let value = secret_value(name, value.as_deref(), *from_stdin)?;
            let info = client.set_secret(name, &value).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}", info.name);
            }
        }
        SecretCommand::Ls => {
            let secrets = client.secrets().await?;
            if json {
                print_json(&secrets)?;
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = secrets
                    .into_iter()
                    .map(|s| vec![s.name, age(s.created_at, now), age(s.updated_at, now)])
                    .collect();
                print!("{}", render_table(&["NAME", "CREATED", "UPDATED"], &rows));
            }
        }
        SecretCommand::Rm { name } => {
            client.delete_secret(name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{parse_token_scope, strip_newline};

    #[test]
    fn parses_scopes_and_trims_one_newline() {
        assert!(parse_token_scope("exec").is_ok());
        assert!(parse_token_scope("admin").is_err());
        assert_eq!(strip_newline("v\n".into()), "v");
        assert_eq!(strip_newline("v\r\n".into()), "v");
        assert_eq!(strip_newline("v\n\n".into()), "v\n");
        assert_eq!(strip_newline("v".into()), "v");
    }
}
