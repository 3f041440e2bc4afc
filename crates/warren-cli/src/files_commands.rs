//! `warren files …` and `warren diff`: the file API from the command line.
//! (`warren cp` is in `file_copy.rs`.)

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use warren_client::{ChangeKind, Client, FileKind, FileStat, TarCompression};

use crate::args::{DiffArgs, FilesCommand};
use crate::file_copy::copy_out;
use crate::output::{print_json, render_table};

/// Deepest listing of `ls -R`.
const RECURSIVE_DEPTH: u32 = 32;

/// Runs one `warren files` subcommand.
pub async fn run(client: &Client, command: &FilesCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        FilesCommand::Ls {
            recursive,
            depth,
            id,
            path,
        } => {
            let depth = if *recursive {
                RECURSIVE_DEPTH
            } else {
                depth.unwrap_or(1)
            };
            let entries = client
                .list_files(id, path, depth)
                .await
                .with_context(|| format!("cannot list {path} in sandbox {id}"))?;
            if json {
                print_json(&serde_json::json!({ "entries": entries }))?;
            } else {
                print!("{}", render_listing(&entries));
            }
        }
        FilesCommand::Cat { id, path } => {
            let mut download = client
                .download_file(id, path, None)
                .await
                .with_context(|| format!("cannot read {path} in sandbox {id}"))?;
            copy_out(&mut download, tokio::io::stdout())
                .await
                .with_context(|| format!("reading {path} from sandbox {id} broke off"))?;
        }
        FilesCommand::Stat { id, path } => {
            let stat = client
                .stat_file(id, path)
                .await
                .with_context(|| format!("cannot stat {path} in sandbox {id}"))?;
            if json {
                print_json(&stat)?;
            } else {
                print!("{}", render_stat(&stat));
            }
        }
        FilesCommand::Rm {
            recursive,
            id,
            path,
        } => {
            client
                .remove_file(id, path, *recursive)
                .await
                .with_context(|| format!("cannot remove {path} in sandbox {id}"))?;
            if json {
                print_json(&serde_json::json!({ "removed": path }))?;
            }
        }
        FilesCommand::Mkdir { mode, id, path } => {
            let stat = client
                .make_dir(id, path, *mode)
                .await
                .with_context(|| format!("cannot create directory {path} in sandbox {id}"))?;
            if json {
                print_json(&stat)?;
            }
        }
        FilesCommand::Mv {
            force,
            id,
            from,
            to,
        } => {
            let stat = client
                .move_file(id, from, to, *force)
                .await
                .with_context(|| format!("cannot move {from} to {to} in sandbox {id}"))?;
            if json {
                print_json(&stat)?;
            }
        }
        FilesCommand::Find {
            limit,
            id,
            root,
            glob,
        } => {
            let found = client
                .find_files(id, root, glob, *limit)
                .await
                .with_context(|| format!("cannot search {root} in sandbox {id}"))?;
            if json {
                print_json(&found)?;
            } else {
                let mut stdout = std::io::stdout().lock();
                for item in &found.items {
                    writeln!(stdout, "{}", item.path)?;
                }
                if found.truncated {
                    eprintln!("warning: more entries match; raise --limit to see them");
                }
            }
        }
        FilesCommand::Grep {
            ignore_case,
            glob,
            limit,
            id,
            root,
            pattern,
        } => {
            let found = client
                .grep_files(id, root, pattern, glob.as_deref(), *ignore_case, *limit)
                .await
                .with_context(|| format!("cannot search {root} in sandbox {id}"))?;
            if json {
                print_json(&found)?;
            } else {
                let mut stdout = std::io::stdout().lock();
                for m in &found.matches {
                    writeln!(stdout, "{}:{}:{}", m.path, m.line, m.text)?;
                }
                if found.truncated {
                    eprintln!("warning: more lines match; raise --limit to see them");
                }
            }
            // Like grep: exit 1 when nothing matched.
            if found.matches.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        FilesCommand::Watch {
            recursive,
            id,
            path,
        } => {
            let mut events = client
                .watch_files(id, path, *recursive)
                .await
                .with_context(|| format!("cannot watch {path} in sandbox {id}"))?;
            while let Some(event) = events
                .next()
                .await
                .with_context(|| format!("watching {path} in sandbox {id} broke off"))?
            {
                let line = if json {
                    serde_json::to_string(&event)?
                } else {
                    match &event.from {
                        Some(from) => format!("{} {} -> {}", event.kind.as_str(), from, event.path),
                        None if event.is_dir => format!("{} {}/", event.kind.as_str(), event.path),
                        None => format!("{} {}", event.kind.as_str(), event.path),
                    }
                };
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{line}")?;
                stdout.flush()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren diff`: the sandbox's changes as a table, JSON, or a tar.
pub async fn diff(client: &Client, args: &DiffArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = &args.id;
    if let Some(tar) = &args.tar {
        let mut stream = client
            .changes_tar(id, TarCompression::None)
            .await
            .with_context(|| format!("cannot export the changes of sandbox {id}"))?;
        let bytes = if tar.as_os_str() == "-" {
            copy_out(&mut stream, tokio::io::stdout()).await?
        } else {
            let file = tokio::fs::File::create(tar)
                .await
                .with_context(|| format!("cannot create {}", tar.display()))?;
            copy_out(&mut stream, file)
                .await
                .with_context(|| format!("writing {} broke off", tar.display()))?
        };
        if json && tar.as_os_str() != "-" {
            print_json(&serde_json::json!({ "tar": tar, "bytes": bytes }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let changes = client
        .changes(id)
        .await
        .with_context(|| format!("cannot list the changes of sandbox {id}"))?;
    if json {
        print_json(&serde_json::json!({ "changes": changes }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let kind = match c.kind {
                ChangeKind::Added => "A",
                ChangeKind::Modified => "M",
                ChangeKind::Deleted => "D",
            };
            let path = if c.is_dir {
                format!("{}/", c.path.trim_end_matches('/'))
            } else {
                c.path.clone()
            };
            let size = if c.is_dir || c.kind == ChangeKind::Deleted {
                "-".to_owned()
            } else {
                c.size.to_string()
            };
            vec![kind.to_owned(), path, size]
        })
        .collect();
    print!("{}", render_table(&["KIND", "PATH", "SIZE"], &rows));
    Ok(ExitCode::SUCCESS)
}

/// `drwxr-xr-x`-style kind and permission bits.
fn mode_string(kind: FileKind, mode: u32) -> String {
    let kind = match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Other => '?',
        FileKind::File => '-',
    };
    let mut out = String::with_capacity(10);
    out.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

fn mtime_text(mtime: i64) -> String {
    DateTime::<Utc>::from_timestamp(mtime, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| mtime.to_string())
}

fn render_listing(entries: &[FileStat]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut name = e.path.clone();
            if e.kind == FileKind::Dir {
                name.push('/');
            }
            if let Some(target) = &e.link_target {
                name = format!("{name} -> {target}");
            }
            vec![
                mode_string(e.kind, e.mode),
                format!("{}:{}", e.uid, e.gid),
                e.size.to_string(),
                mtime_text(e.mtime),
                name,
            ]
        })
        .collect();
    render_table(&["MODE", "OWNER", "SIZE", "MODIFIED", "PATH"], &rows)
}

fn render_stat(stat: &FileStat) -> String {
    let mut out = format!(
        "path:     {}\nkind:     {}\nsize:     {}\nmode:     {:04o} ({})\nowner:    {}:{}\nmodified: {}\n",
        stat.path,
        stat.kind.as_str(),
        stat.size,
        stat.mode,
        mode_string(stat.kind, stat.mode),
        stat.uid,
        stat.gid,
        mtime_text(stat.mtime),
    );
    if let Some(target) = &stat.link_target {
        out.push_str(&format!("target:   {target}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_commands_parse() {
        use crate::args::{Cli, Command};
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
                .command
        };
        assert!(matches!(
            parse(&["files", "ls", "-R", "abc", "/w"]),
            Command::Files(FilesCommand::Ls {
                recursive: true,
                ..
            })
        ));
        assert!(matches!(
            parse(&["files", "grep", "-i", "--glob", "*.rs", "abc", "/w", "fn"]),
            Command::Files(FilesCommand::Grep {
                ignore_case: true,
                glob: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&["files", "mkdir", "-m", "0700", "abc", "/w/d"]),
            Command::Files(FilesCommand::Mkdir {
                mode: Some(0o700),
                ..
            })
        ));
        assert!(matches!(
            parse(&["cp", "-", "abc:/w/x"]),
            Command::Cp(ref args) if args.src == "-" && args.dst == "abc:/w/x"
        ));
        assert!(matches!(
            parse(&["diff", "--tar", "-", "abc"]),
            Command::Diff(ref args) if args.tar.as_deref() == Some(std::path::Path::new("-"))
        ));
        let bad = ["files", "ls", "--depth", "33", "abc", "/w"];
        assert!(Cli::try_parse_from(std::iter::once("warren").chain(bad)).is_err());
        let bad = ["files", "mkdir", "-m", "999", "abc", "/w"];
        assert!(Cli::try_parse_from(std::iter::once("warren").chain(bad)).is_err());
    }

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileKind::File, 0o640), "-rw-r-----");
        assert_eq!(mode_string(FileKind::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn listing_marks_dirs_and_links() {
        let entry = |path: &str, kind, link: Option<&str>| FileStat {
            path: path.into(),
            kind,
            size: 3,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: link.map(Into::into),
        };
        let text = render_listing(&[
            entry("/w/d", FileKind::Dir, None),
            entry("/w/l", FileKind::Symlink, Some("/etc")),
        ]);
        assert!(text.contains("/w/d/"), "{text}");
        assert!(text.contains("/w/l -> /etc"), "{text}");
        assert!(text.contains("1970-01-01 00:00"), "{text}");
    }
}
