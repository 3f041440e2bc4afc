//! `find` (glob over paths relative to the root) and `grep` (regex over the
//! lines of regular files).

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;

use warren_proto::{EntryKind, FileEntry, FileGrepRequest, GrepLine};

use super::entries::{self, kind_of};
use super::glob::{Glob, MAX_GLOB};
use super::path::{self, Root};
use super::sys;
use super::FileError;

/// Results when the request asks for none in particular.
const DEFAULT_RESULTS: u32 = 1000;
/// Most results one search returns, whatever it asks.
const MAX_RESULTS: u32 = 10_000;
/// Larger files are not searched.
const MAX_GREP_FILE: i64 = 64 * 1024 * 1024;
/// A file with a NUL byte this early is binary and skipped.
const BINARY_PROBE: usize = 8 * 1024;
/// Matched lines are cut to this many bytes.
const MAX_LINE_TEXT: usize = 1000;
/// Longer lines are searched in pieces of this size (bounded memory).
const MAX_LINE_READ: usize = 1024 * 1024;

fn cap(asked: u32) -> usize {
    let asked = if asked == 0 { DEFAULT_RESULTS } else { asked };
    asked.min(MAX_RESULTS) as usize
}

/// Longest grep pattern accepted (bytes); the daemon enforces the same.
pub const MAX_PATTERN: usize = 4096;

/// `glob`, or an `invalid` error when it is longer than [`MAX_GLOB`].
fn checked_glob(glob: &str) -> Result<&str, FileError> {
    if glob.len() > MAX_GLOB {
        return Err(FileError::invalid(format!(
            "glob is longer than {MAX_GLOB} bytes"
        )));
    }
    Ok(glob)
}

pub fn find(
    root: &Root,
    start: &str,
    glob: &str,
    max_results: u32,
) -> Result<(Vec<FileEntry>, bool), FileError> {
    let start = path::normalize(start)?;
    let glob = Glob::new(checked_glob(glob)?);
    let dir = entries::open_dir(root, &start)?;
    let cap = cap(max_results);
    let mut found = Vec::new();
    let mut truncated = false;
    entries::walk(&dir, &start, u32::MAX, &mut |v| {
        if !glob.matches(v.relative) {
            return Ok(true);
        }
        if found.len() >= cap {
            truncated = true;
            return Ok(false);
        }
        let target = (kind_of(v.st.st_mode) == EntryKind::Symlink)
            .then(|| sys::readlinkat(v.dir, v.name).ok())
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        found.push(entries::entry_of(v.path, v.st, target));
        Ok(true)
    })?;
    Ok((found, truncated))
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn cut_line(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Grep {
    regex: regex::bytes::Regex,
    cap: usize,
    matches: Vec<GrepLine>,
    truncated: bool,
}

impl Grep {
    /// Searches one open file; false once the cap is passed.
    fn file(&mut self, file: std::fs::File, path: &str) -> bool {
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        match reader.fill_buf() {
            Ok(head) if head[..head.len().min(BINARY_PROBE)].contains(&0) => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_LINE_READ as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
            let full_line = line.last() == Some(&b'\n');
            if full_line {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            number += 1;
            if self.regex.is_match(&line) {
                if self.matches.len() >= self.cap {
                    self.truncated = true;
                    return false;
                }
                let text = String::from_utf8_lossy(&line);
                self.matches.push(GrepLine {
                    path: path.to_string(),
                    line: number,
                    text: cut_line(&text, MAX_LINE_TEXT).to_string(),
                });
            }
            if !full_line && line.len() >= MAX_LINE_READ {
                // The rest of an overlong line counts as the same line.
                number -= 1;
            }
        }
    }
}

fn open_regular(dir: i32, name: &std::ffi::CStr) -> Option<std::fs::File> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = sys::openat(dir, name, flags, 0).ok()?;
    let st = sys::fstat(fd.as_raw_fd()).ok()?;
    (kind_of(st.st_mode) == EntryKind::File && st.st_size <= MAX_GREP_FILE)
        .then(|| std::fs::File::from(fd))
}

pub fn grep(root: &Root, req: &FileGrepRequest) -> Result<(Vec<GrepLine>, bool), FileError> {
    let start = path::normalize(&req.root)?;
    if req.pattern.len() > MAX_PATTERN {
        return Err(FileError::invalid(format!(
            "pattern is longer than {MAX_PATTERN} bytes"
        )));
    }
    if let Some(g) = &req.glob {
        checked_glob(g)?;
    }
    let regex = regex::bytes::RegexBuilder::new(&req.pattern)
        .case_insensitive(req.ignore_case)
        .size_limit(16 * 1024 * 1024)
        .build()
        .map_err(|e| FileError::invalid(format!("bad regular expression: {e}")))?;
    let glob = req.glob.as_deref().map(|g| (Glob::new(g), g.contains('/')));
    let mut grep = Grep {
        regex,
        cap: cap(req.max_matches),
        matches: Vec::new(),
        truncated: false,
    };
    let top = entries::stat(root, &start)?;
    if top.kind != EntryKind::Dir {
        if top.kind == EntryKind::File && top.size as i64 <= MAX_GREP_FILE {
            let at = root.locate(&start)?;
            if let Some(file) = open_regular(at.parent.as_raw_fd(), &at.name) {
                grep.file(file, &start);
            }
        }
        return Ok((grep.matches, grep.truncated));
    }
    let dir = entries::open_dir(root, &start)?;
    entries::walk(&dir, &start, u32::MAX, &mut |v| {
        if kind_of(v.st.st_mode) != EntryKind::File || v.st.st_size > MAX_GREP_FILE {
            return Ok(true);
        }
        if let Some((glob, whole_path)) = &glob {
            let subject = if *whole_path {
                v.relative
            } else {
                path::split(v.path).1
            };
            if !glob.matches(subject) {
                return Ok(true);
            }
        }
        let Some(file) = open_regular(v.dir, v.name) else {
            return Ok(true);
        };
        Ok(grep.file(file, v.path))
    })?;
    Ok((grep.matches, grep.truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_globs_are_invalid() {
        assert!(checked_glob(&"a".repeat(MAX_GLOB)).is_ok());
        let e = checked_glob(&"**/".repeat(20_000)).unwrap_err();
        assert_eq!(e.code, super::super::ErrorCode::Invalid);
        assert!(e.message.contains("glob"), "{}", e.message);
    }

    #[test]
    fn lines_are_cut_on_character_boundaries() {
        assert_eq!(cut_line("short", 1000), "short");
        let long = "é".repeat(600); // 1200 bytes
        let cut = cut_line(&long, MAX_LINE_TEXT);
        assert!(cut.len() <= MAX_LINE_TEXT && cut.len() >= MAX_LINE_TEXT - 1);
        assert_eq!(cap(0), DEFAULT_RESULTS as usize);
        assert_eq!(cap(u32::MAX), MAX_RESULTS as usize);
    }
}
