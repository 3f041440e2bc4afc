//! What the agent-facing process and file APIs need from a driver: where its
//! sandboxes' agents listen and a live connection to one. Every driver whose
//! sandboxes run `warren-agent` (namespace, gVisor) implements it and gets
//! [`crate::ProcessControl`] and [`crate::FileControl`] from the same code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use warren_proto::Frame;

use crate::agent_conn::AgentConn;
use crate::driver::{DriverError, ExecOutcome, ExecSpec};

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

/// Runs one command to completion through an agent connection. The agent
/// cannot tell OOM kills apart, so `oom_killed` is false; drivers that can
/// (from the cgroup) set it.
pub(crate) async fn exec(conn: &AgentConn, spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
    let answer = conn
        .request(|stream| {
            Frame::Exec(warren_proto::ExecRequest {
                stream,
                argv: spec.argv,
                cwd: spec.cwd,
                env: spec.env,
                stdin: spec.stdin,
                timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
                user: spec.user,
            })
        })
        .await?;
    match answer {
        Frame::ExecDone(done) => Ok(ExecOutcome {
            exit_code: done.exit_code,
            stdout: done.stdout,
            stderr: done.stderr,
            duration: Duration::from_millis(done.duration_ms),
            timed_out: done.timed_out,
            oom_killed: false,
        }),
        Frame::Error { message, .. } => Err(DriverError::Agent(message)),
        other => Err(DriverError::Agent(format!("unexpected answer {other:?}"))),
    }
}
