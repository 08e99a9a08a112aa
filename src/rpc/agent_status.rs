//! The `AgentStatus` call's messages to and from the agent's status types.

use super::pb;
use crate::agent::{Activity, DestStatus, RootStatus};

/// What a plain mirror answers to `AgentStatus` (`FAILED_PRECONDITION`).
pub const NOT_AN_AGENT: &str = "this server is a mirror, not an agent: it has no roots to report";

fn text(s: Option<String>) -> String {
    s.unwrap_or_default()
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<RootStatus> for pb::AgentRootStatus {
    fn from(r: RootStatus) -> pb::AgentRootStatus {
        pb::AgentRootStatus {
            name: r.name,
            path: r.path,
            profile: r.profile,
            key: r.key,
            direction: r.direction,
            schedule: r.schedule,
            state: r.state.as_str().to_string(),
            last_success_unix_ms: r.last_success_unix_ms,
            last_error: text(r.last_error),
            next_run_unix_ms: r.next_run_unix_ms,
            files: r.files,
            bytes: r.bytes,
            last_push_files: r.last_push_files,
            last_push_bytes: r.last_push_bytes,
            pushes: r.pushes,
            dirty: r.dirty,
            destinations: r.destinations.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<DestStatus> for pb::AgentDestStatus {
    fn from(d: DestStatus) -> pb::AgentDestStatus {
        pb::AgentDestStatus {
            url: d.url,
            kind: d.kind,
            holds: text(d.holds),
            up_to_date: d.up_to_date,
            failures: d.failures,
            retry_unix_ms: d.retry_unix_ms,
            last_error: text(d.last_error),
            backing_off: d.backing_off,
        }
    }
}

impl TryFrom<pb::AgentRootStatus> for RootStatus {
    type Error = String;

    fn try_from(r: pb::AgentRootStatus) -> Result<RootStatus, String> {
        let state = Activity::parse(&r.state).ok_or_else(|| format!("unknown root state {:?}", r.state))?;
        Ok(RootStatus {
            name: r.name,
            path: r.path,
            profile: r.profile,
            key: r.key,
            direction: r.direction,
            schedule: r.schedule,
            state,
            files: r.files,
            bytes: r.bytes,
            last_success_unix_ms: r.last_success_unix_ms,
            last_error: opt(r.last_error),
            next_run_unix_ms: r.next_run_unix_ms,
            last_push_files: r.last_push_files,
            last_push_bytes: r.last_push_bytes,
            pushes: r.pushes,
            dirty: r.dirty,
            destinations: r.destinations.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<pb::AgentDestStatus> for DestStatus {
    fn from(d: pb::AgentDestStatus) -> DestStatus {
        DestStatus {
            url: d.url,
            kind: d.kind,
            holds: opt(d.holds),
            up_to_date: d.up_to_date,
            backing_off: d.backing_off,
            failures: d.failures,
            retry_unix_ms: d.retry_unix_ms,
            last_error: opt(d.last_error),
        }
    }
}
