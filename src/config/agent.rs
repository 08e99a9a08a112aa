//! The `[agent]` section: roots to watch, where to push them, how often.
//!
//! [`AgentSettings`] is what the file says (strings, as TOML and the
//! environment give them); [`AgentSettings::resolve`] turns it, without I/O,
//! into the typed [`AgentConfig`] the agent runs with, or one error naming
//! the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::profile::Profile;
use crate::schedule::{self, Schedule};

/// The agent process (`cachesync agent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Where peers push to this agent (gRPC); empty: the agent serves nothing.
    pub listen: String,
    /// The agent's embedded store (what peers push into); empty: `<state_dir>/agent-store`.
    pub store: String,
    /// The tokens file of the listener (empty: anyone who can reach it may push).
    pub tokens_file: String,
    /// Other agents to push to, as URLs (`http://host:7416`).
    pub peers: Vec<String>,
    /// Also push to (and, for `pull` roots, pull from) the mirror of the `[client]` section.
    pub use_mirror: bool,
    /// How long a path must stay quiet (no event, mtime this old) before it is synced.
    pub settle: String,
    /// How often the whole tree is walked again, to catch what the kernel dropped.
    pub rescan: String,
    /// Most directories watched per root (0: as many as the kernel allows).
    pub max_watches: usize,
    /// Address of the Prometheus `GET /metrics` endpoint; empty: none.
    pub metrics_listen: String,
    /// The roots, as `[[agent.root]]` tables.
    pub root: Vec<RootSettings>,
}

/// One `[[agent.root]]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RootSettings {
    /// A short name for logs and status (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// `generic`, `go-mod` or `go-build`.
    pub profile: String,
    /// The key its snapshots are committed under.
    pub key: String,
    /// Sync every so often (`30s`, `5m`); the default when `cron` is empty too: `1m`.
    pub interval: String,
    /// Or on a cron schedule (`0 2 * * *`, UTC).
    pub cron: String,
    /// `push`, `pull` or `both` (the default).
    pub direction: String,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            listen: "127.0.0.1:7416".into(),
            store: String::new(),
            tokens_file: String::new(),
            peers: Vec::new(),
            use_mirror: false,
            settle: "2s".into(),
            rescan: "10m".into(),
            max_watches: 0,
            metrics_listen: String::new(),
            root: Vec::new(),
        }
    }
}

/// Which way a root's content moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local changes go out; nothing received is written to the root.
    Push,
    /// Snapshots received (or found on the mirror) are written to the root; nothing goes out.
    Pull,
    /// Both.
    Both,
}

impl Direction {
    /// Local changes are pushed.
    pub fn pushes(self) -> bool {
        self != Direction::Pull
    }

    /// Received snapshots are written to the root.
    pub fn pulls(self) -> bool {
        self != Direction::Push
    }
}

/// The agent's settings, checked and typed.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where to listen, if anywhere.
    pub listen: Option<SocketAddr>,
    /// Peer URLs.
    pub peers: Vec<String>,
    /// Use the `[client]` mirror.
    pub use_mirror: bool,
    /// Quiet time before a path is synced.
    pub settle: Duration,
    /// Full rescan period.
    pub rescan: Duration,
    /// Watch limit per root (0: the kernel's).
    pub max_watches: usize,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The roots.
    pub roots: Vec<RootConfig>,
}

/// One root, checked and typed.
#[derive(Debug, Clone)]
pub struct RootConfig {
    /// Its name.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// Its profile.
    pub profile: Profile,
    /// Its key.
    pub key: String,
    /// When it syncs.
    pub schedule: Schedule,
    /// Which way.
    pub direction: Direction,
}

fn url_ok(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

impl AgentSettings {
    /// Checks and types the section; an empty list of roots is allowed here
    /// (only `cachesync agent` needs one).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let address = |name: &str, text: &str| match text {
            "" => Ok(None),
            text => text.parse::<SocketAddr>().map(Some).map_err(|_| {
                bad(format!("agent.{name} = {text:?}: expected an address like 127.0.0.1:7416, or empty"))
            }),
        };
        let listen = address("listen", &self.listen)?;
        let metrics_listen = address("metrics_listen", &self.metrics_listen)?;
        if let Some(p) = self.peers.iter().find(|p| !url_ok(p)) {
            return Err(bad(format!("agent.peers: {p:?} is not a URL like http://host:7416")));
        }
        let duration = |name: &str, text: &str| {
            schedule::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(format!("agent.{name} = {text:?}: expected a duration like 2s or 10m")))
        };
        let (settle, rescan) = (duration("settle", &self.settle)?, duration("rescan", &self.rescan)?);
        let mut roots: Vec<RootConfig> = Vec::new();
        for r in &self.root {
            let root = r.resolve()?;
            if roots.iter().any(|o| o.name == root.name) {
                return Err(bad(format!("agent.root: two roots are named {:?}", root.name)));
            }
            if root.direction.pushes() && self.peers.is_empty() && !self.use_mirror {
                let why = "pushes, but agent.peers is empty and agent.use_mirror is false";
                return Err(bad(format!("agent.root {:?} {why}", root.name)));
            }
            roots.push(root);
        }
        let peers = self.peers.clone();
        Ok(AgentConfig {
            listen,
            peers,
            use_mirror: self.use_mirror,
            settle,
            rescan,
            max_watches: self.max_watches,
            metrics_listen,
            roots,
        })
    }
}

impl RootSettings {
    fn resolve(&self) -> Result<RootConfig, ConfigError> {
        let name = &self.name;
        let bad = |m: String| ConfigError::Invalid(format!("agent.root {name:?}: {m}"));
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(name_ok) {
            return Err(bad("name: expected 1 to 64 letters, digits, '-', '_' or '.'".into()));
        }
        if self.path.as_os_str().is_empty() {
            return Err(bad("path is empty".into()));
        }
        let profile: Profile = self.profile.parse().map_err(|e| bad(format!("profile: {e}")))?;
        crate::store::check_key(&self.key).map_err(|e| bad(format!("key: {e}")))?;
        let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let (interval, cron) = match (given(&self.interval), given(&self.cron)) {
            (None, None) => (Some("1m".to_string()), None),
            pair => pair,
        };
        let schedule = Schedule::from_parts(interval.as_deref(), cron.as_deref())
            .map_err(|e| bad(format!("interval/cron: {e}")))?;
        if matches!(schedule, Schedule::Every(d) if d.is_zero()) {
            return Err(bad("interval: must be more than zero".into()));
        }
        let direction = match self.direction.as_str() {
            "push" => Direction::Push,
            "pull" => Direction::Pull,
            "both" | "" => Direction::Both,
            other => return Err(bad(format!("direction = {other:?}: expected push, pull or both"))),
        };
        let (path, key) = (self.path.clone(), self.key.clone());
        Ok(RootConfig { name: name.clone(), path, profile, key, schedule, direction })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> RootSettings {
        RootSettings { name: name.into(), path: "/tmp/r".into(), key: "k/1".into(), ..RootSettings::default() }
    }

    fn with(roots: Vec<RootSettings>) -> AgentSettings {
        AgentSettings { peers: vec!["http://127.0.0.1:7416".into()], root: roots, ..AgentSettings::default() }
    }

    #[test]
    fn defaults_resolve() {
        let c = with(vec![root("a")]).resolve().unwrap();
        assert_eq!(c.settle, Duration::from_secs(2));
        assert_eq!(c.rescan, Duration::from_secs(600));
        assert_eq!(c.roots[0].schedule, Schedule::Every(Duration::from_secs(60)));
        assert_eq!(c.roots[0].direction, Direction::Both);
        assert_eq!(c.listen, Some("127.0.0.1:7416".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let check = |s: AgentSettings, what: &str| {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains(what), "{e} lacks {what}");
        };
        check(AgentSettings { listen: "nowhere".into(), ..with(vec![]) }, "agent.listen");
        check(AgentSettings { metrics_listen: ":9".into(), ..with(vec![]) }, "agent.metrics_listen");
        check(AgentSettings { settle: "soon".into(), ..with(vec![]) }, "agent.settle");
        check(AgentSettings { peers: vec!["peer:1".into()], ..with(vec![]) }, "agent.peers");
        check(with(vec![root("a"), root("a")]), "two roots");
        check(with(vec![RootSettings { direction: "sideways".into(), ..root("a") }]), "direction");
        check(with(vec![RootSettings { key: "../x".into(), ..root("a") }]), "key");
        check(with(vec![RootSettings { profile: "npm?".into(), ..root("a") }]), "profile");
        check(with(vec![RootSettings { interval: "1m".into(), cron: "* * * * *".into(), ..root("a") }]), "interval");
        check(with(vec![root("has space")]), "name");
        check(AgentSettings { peers: vec![], ..with(vec![root("a")]) }, "use_mirror");
        let pull_only =
            AgentSettings { peers: vec![], ..with(vec![RootSettings { direction: "pull".into(), ..root("a") }]) };
        assert!(pull_only.resolve().is_ok());
    }
}
