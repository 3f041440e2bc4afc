//! Every kernel touchpoint of Warren.
//!
//! Setting up a sandbox is split in two: [`plan::child_plan`] turns a
//! [`LaunchConfig`] into a list of [`plan::SetupStep`]s (pure data, golden
//! tested), and [`executor::apply`] performs them through the [`sys::Syscalls`]
//! trait, which has a real implementation and a recording fake so that the
//! isolation order is tested without root.

pub mod caps;
pub mod cgroup;
pub mod disk;
pub mod executor;
pub mod host_image;
pub mod launch;
pub mod plan;
pub mod seccomp;
pub mod sys;

pub use launch::{BindMount, LaunchConfig};
