//! A small busybox OCI image built here (busybox-static's binary and a few
//! applet symlinks, one uncompressed layer) and a throwaway local
//! `docker-registry` on 127.0.0.1 it is pushed to with `skopeo`, for the
//! `image` scenario.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 6] = ["sh", "true", "echo", "cat", "ls", "env"];
/// How long the registry may take to answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this host cannot run the `image` scenario, if it cannot.
pub fn unavailable_reason() -> Option<String> {
    let missing: Vec<&str> = ["docker-registry", "skopeo"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "not available: {} missing (Debian packages docker-registry, skopeo)",
            missing.join("/")
        ));
    }
    let is_static = Command::new("file")
        .arg(BUSYBOX)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        .unwrap_or(true);
    if !Path::new(BUSYBOX).is_file() || !is_static {
        return Some(format!(
            "not available: {BUSYBOX} is not a static busybox (Debian package busybox-static)"
        ));
    }
    None
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The layer: /bin/busybox, applet symlinks, /tmp, /etc, /workspace.
fn busybox_layer() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("workspace", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&hex), bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Writes an OCI image layout at `layout` with one image tagged `latest`;
/// returns the layer's size in bytes.
pub fn write_busybox_layout(layout: &Path) -> Result<u64> {
    std::fs::create_dir_all(layout)?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let layer = busybox_layer()?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let (layer_digest, layer_size) = put_blob(layout, &layer)?;
    let config = json!({
        "created": "2024-05-01T12:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "WorkingDir": "/workspace", "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let (config_digest, config_size) = put_blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(layer_size)
}

/// `skopeo copy oci:LAYOUT:latest docker://REFERENCE` (plain HTTP).
pub fn push(layout: &Path, reference: &str) -> Result<()> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .context("run skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A `docker-registry` on 127.0.0.1 with its storage under `dir`; killed on
/// drop.
pub struct LocalRegistry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl LocalRegistry {
    pub fn start(dir: &Path) -> Result<LocalRegistry> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )?;
        let log = dir.join("registry.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start docker-registry")?;
        let mut registry = LocalRegistry { child, port, log };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if registry.answers() {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(&registry.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("docker-registry did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}")
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let request = "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_every_blob_by_its_digest() {
        if !Path::new(BUSYBOX).is_file() {
            eprintln!("skipped: {BUSYBOX} is missing");
            return;
        }
        let dir = std::env::temp_dir().join(format!("warren-bench-oci-{}", std::process::id()));
        let written = write_busybox_layout(&dir);
        let mut ok = written.is_ok();
        for entry in std::fs::read_dir(dir.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            ok &= entry.file_name().to_string_lossy() == sha256_hex(&bytes);
        }
        let index = std::fs::read_to_string(dir.join("index.json")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ok);
        assert!(index.contains("\"latest\""));
    }
}
