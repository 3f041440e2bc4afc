//! Sandbox ports: what is exposed and listening, and the raw TCP tunnel.

use hyper::Method;
use warren_api::{ExposedPort, PortList, SetPortsRequest};

use crate::{attach, routes, Attached, Client, ClientError};

/// `/v1/sandboxes/{id}/ports`.
fn ports_route(id: &str) -> String {
    format!("{}/ports", routes::sandbox(id))
}

impl Client {
    /// `GET /v1/sandboxes/{id}/ports`: the exposed ports and the TCP sockets
    /// listening inside the sandbox.
    pub async fn ports(&self, id: &str) -> Result<PortList, ClientError> {
        self.call(Method::GET, &ports_route(id), None::<&()>).await
    }

    /// `PUT /v1/sandboxes/{id}/ports`: replaces the exposed ports.
    pub async fn set_ports(
        &self,
        id: &str,
        ports: Vec<ExposedPort>,
    ) -> Result<PortList, ClientError> {
        let req = SetPortsRequest { ports };
        self.call(Method::PUT, &ports_route(id), Some(&req)).await
    }

    /// `GET /v1/sandboxes/{id}/ports/{port}/tcp`: a WebSocket whose binary
    /// messages are the bytes of a TCP connection to `127.0.0.1:port` inside
    /// the sandbox (both ways). An empty binary message ends its direction
    /// (a TCP half-close); the daemon sends Close once both have ended.
    pub async fn tcp_tunnel(&self, id: &str, port: u16) -> Result<Attached, ClientError> {
        let route = format!("{}/{port}/tcp", ports_route(id));
        attach::connect(&self.target, self.api_key.as_deref(), &route).await
    }
}
