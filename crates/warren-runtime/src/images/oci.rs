//! OCI / Docker manifest, index and config documents (only the fields
//! Warren reads or writes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ImageConfig, ImageError};

/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation naming a manifest in an OCI layout's index.
pub(crate) const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifest documents are small; anything bigger is refused.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// A manifest or an index, told apart by media type or shape.
#[derive(Debug)]
pub(crate) enum ManifestDoc {
    Manifest(Manifest),
    Index(Index),
}

impl ManifestDoc {
    /// Parses `bytes`; `media_type` is the HTTP Content-Type or the
    /// descriptor's media type (may be empty).
    pub(crate) fn parse(bytes: &[u8], media_type: &str) -> Result<Self, ImageError> {
        let bad = |e: serde_json::Error| ImageError::InvalidArchive(format!("bad manifest: {e}"));
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
        let declared = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or(media_type)
            .to_string();
        let is_index = declared == OCI_INDEX
            || declared == DOCKER_LIST
            || (declared.is_empty() || media_type.is_empty()) && value.get("manifests").is_some();
        if is_index {
            Ok(Self::Index(serde_json::from_value(value).map_err(bad)?))
        } else if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            Err(ImageError::InvalidArchive(
                "Docker schema 1 manifests are not supported".to_string(),
            ))
        } else {
            Ok(Self::Manifest(serde_json::from_value(value).map_err(bad)?))
        }
    }
}

/// Picks linux/amd64 from an index; a single entry without a platform is
/// taken as is.
pub(crate) fn choose_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or(match manifests {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
}

/// The image config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

/// `rootfs` of the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// `config` of the config file (the runtime defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
}

impl ConfigFile {
    /// The sandbox defaults from this config.
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn desc(arch: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}"),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn amd64_is_chosen_from_an_index() {
        let list = [desc("arm64"), desc("amd64")];
        assert_eq!(choose_platform(&list).unwrap().digest, "sha256:amd64");
        assert!(choose_platform(&[desc("arm64")]).is_none());
    }

    #[test]
    fn index_and_manifest_are_told_apart() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestDoc::parse(index, "").unwrap(),
            ManifestDoc::Index(_)
        ));
        let manifest =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:a","size":1},"layers":[]}"#;
        assert!(matches!(
            ManifestDoc::parse(manifest, DOCKER_MANIFEST).unwrap(),
            ManifestDoc::Manifest(_)
        ));
    }

    #[test]
    fn config_defaults() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":["sh"],"WorkingDir":""},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let ic = c.image_config();
        assert_eq!(ic.env, vec!["A=1"]);
        assert_eq!(ic.cmd, vec!["sh"]);
        assert_eq!(ic.working_dir, None);
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:x"]);
    }
}
