//! cachesync: keeps CI/CD build caches in sync between machines.
//!
//! Agents and one-shot commands scan cache directories into manifests, and
//! send only what a mirror or peer lacks over gRPC: blobs deduplicated by
//! blake3, rsync-style deltas for files that change in place. See `DESIGN.md`
//! in the repository for the product and `README.md` for the commands.

pub mod agent;
pub mod auth;
pub mod cli;
mod codec;
pub mod commands;
pub mod config;
pub mod delta;
mod fsutil;
pub mod goproxy;
pub mod hash;
pub mod manifest;
pub mod metrics;
pub mod mirror;
mod parallel;
pub mod profile;
mod progress;
pub mod replicate;
pub mod rpc;
pub mod scan;
pub mod schedule;
mod shutdown;
pub mod store;
pub mod sync;
pub mod watch;
