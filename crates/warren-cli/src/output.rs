//! How results reach the terminal: JSON, aligned tables, ages, error lines.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// Renders rows under a header, columns separated by three spaces and
/// left-aligned; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push('\n');
    }
    out
}

/// "12 seconds ago", "5 minutes ago", "3 hours ago", "2 days ago".
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    let (n, unit) = match secs {
        0..=1 => return "just now".to_owned(),
        2..=119 => (secs, "seconds"),
        120..=7199 => (secs / 60, "minutes"),
        7200..=172_799 => (secs / 3600, "hours"),
        _ => (secs / 86_400, "days"),
    };
    format!("{n} {unit} ago")
}

/// One line for an error: its message and causes, without the repetition
/// that comes from errors whose `Display` already includes their source.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn table_columns_align() {
        let rows = vec![
            vec!["abc".into(), "-".into(), "running".into()],
            vec!["d".into(), "longname".into(), "stopped".into()],
        ];
        let table = render_table(&["ID", "NAME", "STATE"], &rows);
        assert_eq!(
            table,
            "ID    NAME       STATE\n\
             abc   -          running\n\
             d     longname   stopped\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(render_table(&["ID", "NAME"], &[]), "ID   NAME\n");
    }

    #[test]
    fn ages_read_naturally() {
        let now = Utc::now();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(-5), "just now");
        assert_eq!(ago(42), "42 seconds ago");
        assert_eq!(ago(300), "5 minutes ago");
        assert_eq!(ago(3 * 3600), "3 hours ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
    }

    #[test]
    fn error_line_drops_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::from(io).context("cannot open /x: No such file");
        assert_eq!(error_line(&err), "cannot open /x: No such file");

        let err: anyhow::Result<()> = Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied",
        ))
        .context("cannot create /var/lib/warren");
        let err = err.unwrap_err();
        assert_eq!(error_line(&err), "cannot create /var/lib/warren: denied");
    }
}
