//! Images: the built-in `host` image and OCI images imported from archives
//! or pulled from registries.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The image config values that become a sandbox's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Environment as `KEY=VALUE` strings (the image's `Env`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Default working directory (`WorkingDir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Default user: a name, a uid, or `uid:gid` (`User`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `Entrypoint`: prepended to the command.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`: what runs when a command is not given.
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayer {
    /// Digest of the (usually compressed) layer blob, `sha256:…`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// An image as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Name with tag, for example `127.0.0.1:5000/tools/busybox:latest`;
    /// `host` for the built-in image.
    pub name: String,
    /// True for the built-in `host` image (a read-only view of the host's
    /// system, with no layers); it cannot be removed.
    #[serde(default)]
    pub builtin: bool,
    /// Digest of the manifest, `sha256:…` (absent for `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Digest of the config blob (absent for `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// Sum of the layer blob sizes in bytes.
    pub size: u64,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<ImageLayer>,
    /// CPU architecture, for example `amd64`.
    pub architecture: String,
    /// Operating system, `linux`.
    pub os: String,
    /// When the image was built (the config's `created`), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Defaults for sandboxes created from this image: `env` joins the
    /// sandbox's environment, `workingDir` and `user` apply when the create
    /// request names none, `entrypoint` + `cmd` run when a command is omitted.
    #[serde(default)]
    pub config: ImageConfig,
    /// When Warren stored the image (RFC 3339; absent for `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageList {
    /// The built-in `host` image first, then stored images by name.
    pub images: Vec<Image>,
}

/// `DELETE /v1/images/{name}`: what removing the image freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRemoved {
    /// Layers deleted because no other image uses them.
    pub layers_removed: u64,
    /// Bytes freed on disk (blobs and unpacked layers).
    pub bytes_freed: u64,
}

/// `POST /v1/images/pull`: fetch an image from a registry.
///
/// The password is never logged nor stored; `Debug` hides it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullImageRequest {
    /// Image reference: `[registry/]repository[:tag|@sha256:…]`, for example
    /// `docker.io/library/alpine:3.20` or `127.0.0.1:5000/tools/busybox`
    /// (tag `latest` when none is given).
    pub reference: String,
    /// Allow plain HTTP to the registry (always allowed for localhost,
    /// 127.0.0.1 and ::1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Registry user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password or access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for PullImageRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullImageRequest")
            .field("reference", &self.reference)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a pull progress event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PullProgressKind {
    /// The reference was resolved to a manifest (`digest`, `layers`).
    Resolved,
    /// Bytes of one layer received so far (`digest`, `done`, `total`).
    Layer,
    /// The layer was already stored; nothing to download (`digest`).
    LayerExists,
    /// The layer is being unpacked (`digest`).
    Unpacking,
}

/// Data of an `event: progress` on the pull stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullProgress {
    /// What happened.
    pub kind: PullProgressKind,
    /// The manifest digest (`resolved`) or the layer blob digest.
    pub digest: String,
    /// Bytes of the layer received so far (`layer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Size of the layer blob, when known (`layer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Number of layers in the image (`resolved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_debug_hides_the_password() {
        let req = PullImageRequest {
            reference: "r/x".into(),
            username: Some("me".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn progress_kinds_are_camel_case() {
        let event = PullProgress {
            kind: PullProgressKind::LayerExists,
            digest: "sha256:ab".into(),
            done: None,
            total: None,
            layers: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"kind":"layerExists","digest":"sha256:ab"}"#
        );
    }

    #[test]
    fn pull_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<PullImageRequest>(r#"{"reference":"a","tag":"b"}"#);
        assert!(err.is_err());
    }
}
