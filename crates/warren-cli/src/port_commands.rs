//! `warren ports ID`, `warren port-forward ID LOCAL:REMOTE`, and the
//! daemon's `--domain`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_client::{ExposedPort, PortList, PortVisibility, WsMessage};

use crate::output::{print_json, render_table};

/// `warren serve` port flags.
#[derive(Debug, Clone, Default, Args)]
pub struct PortServeArgs {
    /// Route requests for host `{port}-{id}.DOMAIN` to that sandbox port
    /// (point a wildcard DNS name at the daemon's TCP listener).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
}

impl PortServeArgs {
    /// The server's settings.
    pub fn settings(&self) -> warren_server::PortSettings {
        warren_server::PortSettings {
            domain: self.domain.clone(),
        }
    }
}

/// `warren ports ID …`.
#[derive(Debug, Clone, Args)]
pub struct PortsArgs {
    /// Sandbox id.
    pub id: String,
    /// Expose a port through the proxy: `PORT` (private, needs a key or a
    /// token) or `PORT:public` (repeatable).
    #[arg(long, value_name = "PORT[:public]")]
    pub expose: Vec<String>,
    /// Stop exposing a port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub unexpose: Vec<i64>,
}

/// `warren port-forward ID LOCAL:REMOTE`.
#[derive(Debug, Clone, Args)]
pub struct PortForwardArgs {
    /// Sandbox id.
    pub id: String,
    /// `LOCAL:REMOTE`, or `REMOTE` to listen on the same port locally
    /// (`0:REMOTE` picks a free local port).
    #[arg(value_name = "LOCAL:REMOTE")]
    pub ports: String,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
}

/// `PORT` or `PORT:public` / `PORT:private`.
fn parse_expose(text: &str) -> anyhow::Result<ExposedPort> {
    let (port, visibility) = match text.split_once(':') {
        Some((port, "public")) => (port, PortVisibility::Public),
        Some((port, "private")) => (port, PortVisibility::Private),
        Some((_, other)) => {
            anyhow::bail!("--expose {text}: visibility must be public or private, not {other:?}")
        }
        None => (text, PortVisibility::Private),
    };
    let port = port
        .parse::<i64>()
        .with_context(|| format!("--expose {text}: {port:?} is not a port number"))?;
    Ok(ExposedPort { port, visibility })
}

/// `LOCAL:REMOTE` or `REMOTE`.
fn parse_forward(text: &str) -> anyhow::Result<(u16, u16)> {
    let number = |s: &str| {
        s.parse::<u16>()
            .with_context(|| format!("{text}: {s:?} is not a port number (0–65535)"))
    };
    match text.split_once(':') {
        Some((local, remote)) => Ok((number(local)?, number(remote)?)),
        None => {
            let port = number(text)?;
            Ok((port, port))
        }
    }
}

fn visibility_name(v: PortVisibility) -> &'static str {
    match v {
        PortVisibility::Private => "private",
        PortVisibility::Public => "public",
    }
}

/// Runs `warren ports`.
pub async fn ports(
    client: &warren_client::Client,
    args: &PortsArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut list = client.ports(&args.id).await?;
    if !args.expose.is_empty() || !args.unexpose.is_empty() {
        let mut exposed = list.exposed.clone();
        exposed.retain(|p| !args.unexpose.contains(&p.port));
        for text in &args.expose {
            let new = parse_expose(text)?;
            exposed.retain(|p| p.port != new.port);
            exposed.push(new);
        }
        list = client.set_ports(&args.id, exposed).await?;
    }
    if json {
        print_json(&list)?;
    } else {
        print!("{}", ports_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per port: listening address(es) and exposure.
fn ports_table(list: &PortList) -> String {
    let mut ports: Vec<i64> = list
        .listening
        .iter()
        .map(|l| i64::from(l.port))
        .chain(list.exposed.iter().map(|e| e.port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let rows: Vec<Vec<String>> = ports
        .into_iter()
        .map(|port| {
            let listening: Vec<String> = list
                .listening
                .iter()
                .filter(|l| i64::from(l.port) == port)
                .map(|l| format!("{}/{}", l.address, l.protocol))
                .collect();
            let exposed = list
                .exposed
                .iter()
                .find(|e| e.port == port)
                .map_or("-", |e| visibility_name(e.visibility));
            vec![
                port.to_string(),
                if listening.is_empty() {
                    "-".to_owned()
                } else {
                    listening.join(", ")
                },
                exposed.to_owned(),
                list.proxy_path.replace("{port}", &port.to_string()),
            ]
        })
        .collect();
    render_table(&["PORT", "LISTENING", "EXPOSED", "PROXY"], &rows)
}

/// Runs `warren port-forward` until interrupted.
pub async fn port_forward(
    client: &warren_client::Client,
    args: &PortForwardArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (local, remote) = parse_forward(&args.ports)?;
    if remote == 0 {
        anyhow::bail!("the sandbox port must be in 1–65535");
    }
    // Fail early on an unknown sandbox (with the ports list, which a
    // `ports` sandbox token may read, unlike the sandbox itself).
    client.ports(&args.id).await?;
    let listener = TcpListener::bind(SocketAddr::new(args.address, local))
        .await
        .with_context(|| format!("listening on {}:{local}", args.address))?;
    let bound = listener.local_addr().context("reading the local address")?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "forwarding",
                "local": bound.to_string(),
                "sandbox": args.id,
                "port": remote,
            })
        );
    } else {
        println!("Forwarding {bound} -> sandbox {} port {remote}", args.id);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: do not spin.
                        eprintln!("warren: accepting a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let client = client.clone();
                let id = args.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = forward_one(&client, &id, remote, stream).await {
                        eprintln!("warren: connection from {peer}: {e:#}");
                    }
                });
            }
            _ = &mut ctrl_c => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Pipes one local connection through a tunnel. Framing (see the daemon's
/// port proxy): binary messages carry the bytes; an empty binary message is
/// end-of-stream for its direction, so a half-close on either side reaches
/// the other; once both directions have ended a Close is sent. A Close from
/// the daemon, or either connection failing, ends both at once.
async fn forward_one(
    client: &warren_client::Client,
    id: &str,
    port: u16,
    stream: TcpStream,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let socket = client
        .tcp_tunnel(id, port)
        .await
        .with_context(|| format!("opening a tunnel to port {port}"))?;
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut tcp_rx, mut tcp_tx) = stream.into_split();
    let stop = tokio_util::sync::CancellationToken::new();
    let ended = AtomicU8::new(0);
    // Counts one direction as ended; the second one stops the tunnel.
    let direction_ended = || {
        if ended.fetch_add(1, Ordering::SeqCst) == 1 {
            stop.cancel();
        }
    };
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                () = stop.cancelled() => return,
                read = tcp_rx.read(&mut buf) => read,
            };
            match read {
                Ok(0) => {
                    if ws_tx
                        .send(WsMessage::Binary(bytes::Bytes::new()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    direction_ended();
                    return;
                }
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(WsMessage::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        stop.cancel();
    };
    let down = async {
        let mut eof = false;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = ws_rx.next() => message,
            };
            let bytes = match message {
                Some(Ok(WsMessage::Binary(bytes))) => bytes,
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            if eof {
                continue;
            }
            if bytes.is_empty() {
                eof = true;
                let _ = tcp_tx.shutdown().await;
                direction_ended();
            } else if tcp_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        stop.cancel();
    };
    tokio::join!(up, down);
    let _ = ws_tx.send(WsMessage::Close(None)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_expose_and_forward_specs() {
        let e = parse_expose("8080:public").unwrap();
        assert_eq!(e.port, 8080);
        assert_eq!(e.visibility, PortVisibility::Public);
        assert_eq!(
            parse_expose("3000").unwrap().visibility,
            PortVisibility::Private
        );
        assert!(parse_expose("3000:world").is_err());
        assert!(parse_expose("x").is_err());
        assert_eq!(parse_forward("8000:80").unwrap(), (8000, 80));
        assert_eq!(parse_forward("5432").unwrap(), (5432, 5432));
        assert!(parse_forward("a:1").is_err());
    }
}
