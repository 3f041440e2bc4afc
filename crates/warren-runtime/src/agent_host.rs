//! What the agent-facing process and file APIs need from a driver: where its
//! sandboxes' agents listen and a live connection to one. Every driver whose
//! sandboxes run `warren-agent` (namespace, gVisor) implements it and gets
//! [`crate::ProcessControl`] and [`crate::FileControl`] from the same code.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::agent_conn::AgentConn;
use crate::driver::DriverError;

/// A driver that reaches its sandboxes through the agent protocol.
#[async_trait]
pub(crate) trait AgentHost: Send + Sync {
    /// The host path of the sandbox's agent socket.
    fn agent_socket(&self, id: &str) -> PathBuf;

    /// The sandbox's multiplexed agent connection (reconnecting if needed).
    async fn live_conn(&self, id: &str) -> Result<Arc<AgentConn>, DriverError>;
}

#[async_trait]
impl AgentHost for crate::namespace::NamespaceDriver {
    fn agent_socket(&self, id: &str) -> PathBuf {
        self.socket_path(id)
    }

    async fn live_conn(&self, id: &str) -> Result<Arc<AgentConn>, DriverError> {
        crate::namespace::NamespaceDriver::live_conn(self, id).await
    }
}
