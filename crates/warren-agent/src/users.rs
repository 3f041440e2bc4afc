//! Sandbox users: `root`, or a named unprivileged user created on first use
//! in the sandbox's private /etc/passwd and /etc/group.

use std::io::Write;
use std::sync::Mutex;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Serializes user creation: two commands asking for a new user at once
/// must not both append it.
static CREATE: Mutex<()> = Mutex::new(());

const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32
}

fn find(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| Account {
            name: name.to_string(),
            uid: f[2].parse().unwrap_or(u32::MAX),
            gid: f[3].parse().unwrap_or(u32::MAX),
            home: f[5].to_string(),
        })
    })
}

fn ids_in_use(table: &str, field: usize) -> Vec<u32> {
    table
        .lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect()
}

/// The next free id in the regular-user range of both tables.
fn next_free_id(passwd: &str, group: &str) -> Option<u32> {
    let used: Vec<u32> = ids_in_use(passwd, 2)
        .into_iter()
        .chain(ids_in_use(group, 2))
        .collect();
    (FIRST_UID..=LAST_UID).find(|id| !used.contains(id))
}

/// A numeric `UID` or `UID:GID` (as an OCI image's `User` may say), taking
/// the name, primary group and home from /etc/passwd when the uid is there.
fn numeric(spec: &str, passwd: &str) -> Option<Account> {
    let (uid, gid) = match spec.split_once(':') {
        Some((u, g)) => (u.parse::<u32>().ok()?, Some(g.parse::<u32>().ok()?)),
        None => (spec.parse::<u32>().ok()?, None),
    };
    let known = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid)).then(|| {
            (
                f[0].to_string(),
                f[3].parse().unwrap_or(uid),
                f[5].to_string(),
            )
        })
    });
    let (name, passwd_gid, home) = known.unwrap_or_else(|| (uid.to_string(), uid, "/".into()));
    Some(Account {
        name,
        uid,
        gid: gid.unwrap_or(passwd_gid),
        home,
    })
}

/// Finds `name` in /etc/passwd, creating it (with a home directory) when
/// missing. A numeric `UID[:GID]` is used as it is, never created.
pub fn resolve_or_create(name: &str) -> Result<Account, String> {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        return numeric(name, &passwd).ok_or_else(|| format!("invalid numeric user {name:?}"));
    }
    if name == "root" {
        return Ok(Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
        });
    }
    if !valid_name(name) {
        return Err(format!("invalid user name {name:?}"));
    }
    let _guard = CREATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(account) = find(&passwd, name) {
        return Ok(account);
    }
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let id = next_free_id(&passwd, &group).ok_or("no free user id left")?;
    let home = format!("/home/{name}");
    append("/etc/group", &format!("{name}:x:{id}:\n"))?;
    append(
        "/etc/passwd",
        &format!("{name}:x:{id}:{id}::{home}:/bin/sh\n"),
    )?;
    std::fs::create_dir_all(&home).map_err(|e| format!("create {home}: {e}"))?;
    std::os::unix::fs::chown(&home, Some(id), Some(id))
        .map_err(|e| format!("chown {home}: {e}"))?;
    Ok(Account {
        name: name.to_string(),
        uid: id,
        gid: id,
        home,
    })
}

fn append(path: &str, line: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    file.write_all(line.as_bytes())
        .map_err(|e| format!("write {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nstaff:x:1001:\n";

    #[test]
    fn numeric_users_use_passwd_when_the_uid_is_there() {
        let alice = numeric("1000", PASSWD).map(|a| (a.name, a.uid, a.gid, a.home));
        let known = find(PASSWD, "alice").map(|a| (a.name, a.uid, a.gid, a.home));
        assert_eq!(alice, known);
        let anon = numeric("4321:99", PASSWD).map(|a| (a.name, a.uid, a.gid, a.home));
        assert_eq!(anon, Some(("4321".into(), 4321, 99, "/".into())));
        assert!(numeric("12x", PASSWD).is_none());
        assert!(numeric("1:", PASSWD).is_none());
    }

    #[test]
    fn finds_existing_users_and_picks_a_free_id() {
        assert_eq!(
            find(PASSWD, "alice").map(|a| (a.uid, a.home)),
            Some((1000, "/home/alice".into()))
        );
        assert_eq!(find(PASSWD, "bob"), None);
        assert_eq!(next_free_id(PASSWD, GROUP), Some(1002));
    }

    #[test]
    fn names_that_could_corrupt_passwd_are_refused() {
        for bad in ["", "a:b", "a\nb", "Root", "1x", "../etc"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("agent") && valid_name("_svc-1"));
    }
}
