//! In-memory state of the lifecycle machinery, held by the service.

/// Live state of events, lifetimes and pools.
#[derive(Default)]
pub(crate) struct LifecycleState {
    /// Subscribers of sandbox events (SSE).
    pub(crate) events: crate::sandbox_events::EventHub,
    /// Warm pools' refill bookkeeping.
    pub(crate) pools: crate::pools::PoolState,
    /// The last exec, file or port activity of each sandbox (idle timeouts).
    pub(crate) activity: crate::lifetimes::ActivityTracker,
    /// Snapshots being used by creates and forks in progress.
    pub(crate) snapshots: crate::snapshots::SnapshotState,
    /// Template builds in progress (cancelled and awaited at shutdown).
    pub(crate) builds: crate::templates::BuildState,
}
