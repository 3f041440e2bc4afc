//! `warren-agent`: one static binary with two roles.
//!
//! * `warren-agent bootstrap` runs on the host, started by the daemon. It is
//!   single-threaded: it joins the sandbox's cgroups, clones into new
//!   namespaces, writes the id maps, and waits for the child to report that
//!   its setup finished. Then it prints the child's pid and exits, so the
//!   sandbox outlives any daemon.
//! * `warren-agent init CONFIG` is PID 1 inside the sandbox: it reaps zombies
//!   and serves the daemon's frames on the inherited listening socket.

mod bootstrap;
mod exec;
mod files;
mod init;
mod path_listener;
mod processes;
mod reaper;
mod users;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("bootstrap") => bootstrap::run(),
        Some("init") => init::run(args.get(2).map(String::as_str).unwrap_or("")),
        Some("--version") => {
            println!(
                "warren-agent {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                warren_proto::PROTOCOL_VERSION
            );
            0
        }
        _ => {
            eprintln!(
                "usage: warren-agent bootstrap < launch.json | warren-agent init CONFIG_JSON"
            );
            2
        }
    };
    std::process::exit(code);
}
