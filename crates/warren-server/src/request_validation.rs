//! Pure checks that turn API requests into validated values. Every message
//! names the offending field in its JSON spelling.

use std::collections::BTreeMap;
use std::time::Duration;

use warren_api::{
    CreateSandboxRequest, ExecRequest, ResolvedResources, DEFAULT_CPUS, DEFAULT_IMAGE,
    DEFAULT_MEMORY_MB, DEFAULT_PIDS_LIMIT, DEFAULT_WORKDIR,
};
use warren_runtime::{ExecSpec, HostCapacity};

use crate::error::ApiError;

/// Smallest memory limit a sandbox can start with (the agent needs some).
pub const MIN_MEMORY_MB: i64 = 16;
/// Smallest CPU quota, in cores (the kernel's 1 ms per 100 ms floor).
pub const MIN_CPUS: f64 = 0.01;
/// Smallest per-sandbox disk, in MiB (ext4 metadata needs a few).
pub const MIN_DISK_MB: i64 = 32;
/// Smallest pids limit: the agent's own threads need a few.
pub const MIN_PIDS_LIMIT: i64 = 16;
/// Largest memory limit accepted (1 TiB), so byte counts never overflow.
pub const MAX_MEMORY_MB: i64 = 1024 * 1024;
/// Largest CPU quota accepted, in cores.
pub const MAX_CPUS: f64 = 1024.0;
/// Largest pids limit accepted (the kernel's own maximum pid count).
pub const MAX_PIDS_LIMIT: i64 = 4_194_304;
/// Longest sandbox name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A create request with defaults applied and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCreate {
    /// Image name.
    pub image: String,
    /// Optional human name.
    pub name: Option<String>,
    /// Limits.
    pub resources: ResolvedResources,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Default working directory.
    pub workdir: String,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Default user of commands (`None`: root).
    pub user: Option<String>,
}

fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::invalid_value(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

fn check_absolute_path(field: &str, path: &str) -> Result<(), ApiError> {
    no_nul(field, path)?;
    if !path.starts_with('/') {
        return Err(ApiError::invalid_value(format!(
            "{field} must be an absolute path (starting with /), got {path:?}"
        )));
    }
    Ok(())
}

fn check_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in env {
        if key.is_empty() {
            return Err(ApiError::invalid_value(format!(
                "{field} keys must not be empty"
            )));
        }
        if key.contains('=') {
            return Err(ApiError::invalid_value(format!(
                "{field} key {key:?} must not contain '='"
            )));
        }
        no_nul(&format!("{field}.{key}"), key)?;
        no_nul(&format!("{field}.{key}"), value)?;
    }
    Ok(())
}

fn resolve_resources(
    req: &CreateSandboxRequest,
    host: &HostCapacity,
) -> Result<ResolvedResources, ApiError> {
    let requested = req.resources.clone().unwrap_or_default();
    let max_cpus = host.cpus.min(MAX_CPUS);
    let cpus = requested.cpus.unwrap_or(DEFAULT_CPUS.min(max_cpus));
    if !cpus.is_finite() || !(MIN_CPUS..=max_cpus).contains(&cpus) {
        return Err(ApiError::invalid_value(format!(
            "resources.cpus must be between {MIN_CPUS} and {max_cpus} (this host's CPUs), got {cpus}"
        )));
    }
    let max_memory = i64::try_from(host.memory_mb)
        .unwrap_or(MAX_MEMORY_MB)
        .min(MAX_MEMORY_MB);
    let memory_mb = match requested.memory_mb {
        None => DEFAULT_MEMORY_MB.min(max_memory.unsigned_abs()),
        Some(mb) if (MIN_MEMORY_MB..=max_memory).contains(&mb) => mb.unsigned_abs(),
        Some(mb) => {
            return Err(ApiError::invalid_value(format!(
                "resources.memoryMb must be between {MIN_MEMORY_MB} and {max_memory} (this host's memory), got {mb}"
            )))
        }
    };
    let pids_limit = match requested.pids_limit {
        None => DEFAULT_PIDS_LIMIT,
        Some(n) if (MIN_PIDS_LIMIT..=MAX_PIDS_LIMIT).contains(&n) => n.unsigned_abs(),
        Some(n) => {
            return Err(ApiError::invalid_value(format!(
                "resources.pidsLimit must be between {MIN_PIDS_LIMIT} and {MAX_PIDS_LIMIT}, got {n}"
            )))
        }
    };
    let disk_mb = match requested.disk_mb {
        None => None,
        Some(mb) if mb >= MIN_DISK_MB && mb.unsigned_abs() <= host.disk_free_mb => Some(mb.unsigned_abs()),
        Some(mb) => {
            return Err(ApiError::invalid_value(format!(
                "resources.diskMb must be between {MIN_DISK_MB} and {} (free space for sandbox disks on this host), got {mb}",
                host.disk_free_mb
            )))
        }
    };
    Ok(ResolvedResources {
        cpus,
        memory_mb,
        pids_limit,
        disk_mb,
    })
}

/// Checks a user name: `root`, or a POSIX-style login name.
pub fn check_user(field: &str, user: &str) -> Result<(), ApiError> {
    if is_numeric_user(user) {
        return Ok(());
    }
    let mut chars = user.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok || user.len() > 32 {
        return Err(ApiError::invalid_value(format!(
            "{field} must be a user name of at most 32 characters (a lowercase letter or _ followed by lowercase letters, digits, _ or -) or a numeric UID[:GID]; got {user:?}"
        )));
    }
    Ok(())
}

/// `UID` or `UID:GID` in decimal, as OCI images write `User`.
fn is_numeric_user(user: &str) -> bool {
    let number = |s: &str| {
        !s.is_empty()
            && s.len() <= 10
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u32>().is_ok()
    };
    match user.split_once(':') {
        Some((uid, gid)) => number(uid) && number(gid),
        None => number(user),
    }
}

/// Applies defaults and checks every field of a create request.
/// Whether the image exists is the driver's call, checked by the service.
pub fn validate_create(
    req: CreateSandboxRequest,
    host: &HostCapacity,
) -> Result<ValidatedCreate, ApiError> {
    let resources = resolve_resources(&req, host)?;
    if let Some(user) = &req.user {
        check_user("user", user)?;
    }
    let image = req.image.unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    if image.is_empty() {
        return Err(ApiError::invalid_value("image must not be empty"));
    }
    no_nul("image", &image)?;
    if let Some(name) = &req.name {
        if name.is_empty() {
            return Err(ApiError::invalid_value(
                "name must not be empty (omit it instead)",
            ));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid_value(format!(
                "name must be at most {MAX_NAME_CHARS} characters"
            )));
        }
        no_nul("name", name)?;
    }
    let workdir = req.workdir.unwrap_or_else(|| DEFAULT_WORKDIR.to_owned());
    check_absolute_path("workdir", &workdir)?;
    let env = req.env.unwrap_or_default();
    check_env("env", &env)?;
    let metadata = req.metadata.unwrap_or_default();
    for (key, value) in &metadata {
        if key.is_empty() {
            return Err(ApiError::invalid_value("metadata keys must not be empty"));
        }
        no_nul(&format!("metadata.{key}"), key)?;
        no_nul(&format!("metadata.{key}"), value)?;
    }
    Ok(ValidatedCreate {
        image,
        user: req.user.filter(|u| u != "root"),
        name: req.name,
        resources,
        env,
        workdir,
        metadata,
    })
}

/// Checks an exec request and builds the driver's spec: the sandbox's env
/// overlaid with the request's, and the sandbox's workdir unless `cwd` is given.
pub fn validate_exec(
    req: ExecRequest,
    sandbox_env: &BTreeMap<String, String>,
    sandbox_workdir: &str,
) -> Result<ExecSpec, ApiError> {
    let argv = match (req.cmd, req.shell) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_value(
                "give exactly one of cmd or shell, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid_value(
                "give exactly one of cmd (an argv array) or shell (a command line)",
            ))
        }
        (Some(cmd), None) => {
            match cmd.first() {
                None => return Err(ApiError::invalid_value("cmd must not be empty")),
                Some(program) if program.is_empty() => {
                    return Err(ApiError::invalid_value("cmd[0] must not be empty"))
                }
                Some(_) => {}
            }
            for (i, arg) in cmd.iter().enumerate() {
                no_nul(&format!("cmd[{i}]"), arg)?;
            }
            cmd
        }
        (None, Some(shell)) => {
            if shell.trim().is_empty() {
                return Err(ApiError::invalid_value("shell must not be empty"));
            }
            no_nul("shell", &shell)?;
            vec!["/bin/sh".to_owned(), "-c".to_owned(), shell]
        }
    };
    let cwd = match req.cwd {
        Some(cwd) => {
            check_absolute_path("cwd", &cwd)?;
            cwd
        }
        None => sandbox_workdir.to_owned(),
    };
    let extra_env = req.env.unwrap_or_default();
    check_env("env", &extra_env)?;
    let mut env = sandbox_env.clone();
    env.extend(extra_env);
    if let Some(user) = &req.user {
        check_user("user", user)?;
    }
    let timeout = match req.timeout_ms {
        Some(0) => return Err(ApiError::invalid_value("timeoutMs must be at least 1")),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    Ok(ExecSpec {
        argv,
        cwd: Some(cwd),
        env: env.into_iter().collect(),
        stdin: req.stdin.map(String::into_bytes).unwrap_or_default(),
        timeout,
        user: req.user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::{ErrorCode, Resources};

    /// A fixed host so the tests do not depend on the machine.
    const HOST: HostCapacity = HostCapacity {
        cpus: 4.0,
        memory_mb: 8192,
        disk_free_mb: 10_000,
    };

    fn create_with(resources: Resources) -> Result<ValidatedCreate, ApiError> {
        validate_create(
            CreateSandboxRequest {
                resources: Some(resources),
                ..Default::default()
            },
            &HOST,
        )
    }

    #[test]
    fn limits_beyond_the_host_or_below_the_floor_name_the_allowed_range() {
        for (resources, needle) in [
            (
                Resources {
                    memory_mb: Some(8193),
                    ..Default::default()
                },
                "between 16 and 8192",
            ),
            (
                Resources {
                    cpus: Some(4.5),
                    ..Default::default()
                },
                "between 0.01 and 4",
            ),
            (
                Resources {
                    cpus: Some(0.001),
                    ..Default::default()
                },
                "resources.cpus",
            ),
            (
                Resources {
                    pids_limit: Some(8),
                    ..Default::default()
                },
                "between 16 and",
            ),
            (
                Resources {
                    disk_mb: Some(8),
                    ..Default::default()
                },
                "resources.diskMb must be between 32 and 10000",
            ),
            (
                Resources {
                    disk_mb: Some(20_000),
                    ..Default::default()
                },
                "resources.diskMb",
            ),
        ] {
            let err = create_with(resources).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidValue);
            assert!(err.message.contains(needle), "{}", err.message);
        }
        assert!(create_with(Resources {
            memory_mb: Some(8192),
            cpus: Some(4.0),
            pids_limit: Some(16),
            disk_mb: Some(64),
        })
        .is_ok());
    }

    #[test]
    fn user_names_are_checked() {
        for bad in [
            "",
            "Root",
            "1abc",
            "a b",
            "../x",
            "averyveryveryveryverylongusername1",
        ] {
            let req = CreateSandboxRequest {
                user: Some(bad.into()),
                ..Default::default()
            };
            assert!(validate_create(req, &HOST).is_err(), "{bad:?} accepted");
        }
        let ok = validate_create(
            CreateSandboxRequest {
                user: Some("agent".into()),
                ..Default::default()
            },
            &HOST,
        )
        .unwrap();
        assert_eq!(ok.user.as_deref(), Some("agent"));
        let root = validate_create(
            CreateSandboxRequest {
                user: Some("root".into()),
                ..Default::default()
            },
            &HOST,
        )
        .unwrap();
        assert_eq!(root.user, None);
    }

    #[test]
    fn defaults_apply() {
        let v = validate_create(CreateSandboxRequest::default(), &HOST).unwrap();
        assert_eq!(v.image, DEFAULT_IMAGE);
        assert_eq!(v.workdir, DEFAULT_WORKDIR);
        assert_eq!(v.resources, ResolvedResources::default());
    }

    #[test]
    fn impossible_resources_name_the_field() {
        for (resources, field) in [
            (
                Resources {
                    memory_mb: Some(0),
                    ..Default::default()
                },
                "resources.memoryMb",
            ),
            (
                Resources {
                    memory_mb: Some(-5),
                    ..Default::default()
                },
                "resources.memoryMb",
            ),
            (
                Resources {
                    memory_mb: Some(15),
                    ..Default::default()
                },
                "resources.memoryMb",
            ),
            (
                Resources {
                    cpus: Some(-1.0),
                    ..Default::default()
                },
                "resources.cpus",
            ),
            (
                Resources {
                    cpus: Some(0.0),
                    ..Default::default()
                },
                "resources.cpus",
            ),
            (
                Resources {
                    cpus: Some(f64::NAN),
                    ..Default::default()
                },
                "resources.cpus",
            ),
            (
                Resources {
                    cpus: Some(5000.0),
                    ..Default::default()
                },
                "resources.cpus",
            ),
            (
                Resources {
                    pids_limit: Some(0),
                    ..Default::default()
                },
                "resources.pidsLimit",
            ),
        ] {
            let err = create_with(resources).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidValue);
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        let ok = create_with(Resources {
            cpus: Some(0.5),
            memory_mb: Some(16),
            pids_limit: Some(MIN_PIDS_LIMIT),
            disk_mb: None,
        })
        .unwrap();
        assert_eq!(ok.resources.memory_mb, 16);
    }

    #[test]
    fn bad_workdir_env_and_name_are_rejected() {
        let cases = [
            (
                CreateSandboxRequest {
                    workdir: Some("rel".into()),
                    ..Default::default()
                },
                "workdir",
            ),
            (
                CreateSandboxRequest {
                    env: Some(BTreeMap::from([("A=B".into(), "x".into())])),
                    ..Default::default()
                },
                "env",
            ),
            (
                CreateSandboxRequest {
                    env: Some(BTreeMap::from([(String::new(), "x".into())])),
                    ..Default::default()
                },
                "env",
            ),
            (
                CreateSandboxRequest {
                    name: Some("n".repeat(129)),
                    ..Default::default()
                },
                "name",
            ),
        ];
        for (req, field) in cases {
            let err = validate_create(req, &HOST).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidValue);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    #[test]
    fn exec_needs_exactly_one_of_cmd_and_shell() {
        let env = BTreeMap::new();
        for req in [
            ExecRequest::default(),
            ExecRequest {
                cmd: Some(vec!["ls".into()]),
                shell: Some("ls".into()),
                ..Default::default()
            },
            ExecRequest {
                cmd: Some(vec![]),
                ..Default::default()
            },
        ] {
            let err = validate_exec(req, &env, "/w").unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidValue);
            assert!(err.message.contains("cmd"), "{}", err.message);
        }
    }

    #[test]
    fn exec_spec_merges_env_and_defaults_cwd() {
        let sandbox_env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "1".into())]);
        let spec = validate_exec(
            ExecRequest {
                shell: Some("echo hi".into()),
                env: Some(BTreeMap::from([("B".into(), "2".into())])),
                stdin: Some("in".into()),
                timeout_ms: Some(1500),
                ..Default::default()
            },
            &sandbox_env,
            "/workspace",
        )
        .unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(spec.cwd.as_deref(), Some("/workspace"));
        assert_eq!(
            spec.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(spec.stdin, b"in");
        assert_eq!(spec.timeout, Some(Duration::from_millis(1500)));
    }
}
