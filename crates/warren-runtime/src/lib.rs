//! Warren's isolation drivers behind one [`Driver`] trait.

mod agent_conn;
mod capacity;
mod driver;
mod namespace;
mod process;
mod process_state;

pub use capacity::HostCapacity;
pub use driver::{Driver, DriverError, ExecOutcome, ExecSpec, RuntimeInfo, SandboxSpec};
pub use namespace::{NamespaceConfig, NamespaceDriver, AGENT_BINARY};
pub use process::{ProcessControl, ProcessEvent, ProcessInfo, SpawnSpec};
