//! Snapshots of sandboxes' files and forks.

use hyper::Method;
use warren_api::{CreateSnapshotRequest, ForkRequest, ForkResult, Snapshot, SnapshotList};

use crate::{routes, Client, ClientError};

/// `/v1/snapshots/{id}`.
fn snapshot_route(id: &str) -> String {
    format!("/v1/snapshots/{}", routes::encode(id))
}

impl Client {
    /// `POST /v1/sandboxes/{id}/snapshots`: captures the files of a running
    /// or paused sandbox (frozen during the copy) as a snapshot that
    /// sandboxes can be created from (`CreateSandboxRequest::snapshot`).
    pub async fn create_snapshot(
        &self,
        sandbox_id: &str,
        req: &CreateSnapshotRequest,
    ) -> Result<Snapshot, ClientError> {
        let route = format!("{}/snapshots", routes::sandbox(sandbox_id));
        self.call(Method::POST, &route, Some(req)).await
    }

    /// `GET /v1/snapshots`: every snapshot, newest first, with the
    /// sandboxes that use it.
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ClientError> {
        let list: SnapshotList = self.call(Method::GET, "/v1/snapshots", None::<&()>).await?;
        Ok(list.snapshots)
    }

    /// `GET /v1/snapshots/{id}`.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        self.call(Method::GET, &snapshot_route(id), None::<&()>)
            .await
    }

    /// `DELETE /v1/snapshots/{id}`: refused (409, naming them) while
    /// sandboxes, snapshots or templates still use it.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &snapshot_route(id), None::<&()>)
            .await
            .map(drop)
    }

    /// `POST /v1/sandboxes/{id}/fork`: new running sandboxes with the
    /// sandbox's files (and its memory with `memory: true`, on drivers that
    /// can).
    pub async fn fork_sandbox(
        &self,
        id: &str,
        req: &ForkRequest,
    ) -> Result<ForkResult, ClientError> {
        let route = format!("{}/fork", routes::sandbox(id));
        self.call(Method::POST, &route, Some(req)).await
    }
}
