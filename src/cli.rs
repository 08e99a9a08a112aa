//! Command-line flags: clap types only, no I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Keeps CI/CD build caches in sync between machines.
#[derive(Debug, Parser)]
#[command(name = "cachesync", version, about)]
pub struct Cli {
    /// A TOML configuration file (settings: file, then CACHESYNC_* environment, then flags).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. info, debug, cachesync=debug.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a store over gRPC until SIGTERM or SIGINT.
    Mirror(MirrorArgs),
    /// Send a directory to a mirror as a new snapshot of a key.
    Push(PushArgs),
    /// Restore the newest snapshot of a key into a directory.
    Pull(PullArgs),
    /// List a mirror's keys with their newest snapshots.
    Status(StatusArgs),
    /// Hash a directory and print its manifest summary (no network).
    Scan(ScanArgs),
    /// Check a Go module cache: complete module versions, zip hashes, go.sum (no network).
    Verify(VerifyArgs),
    /// Remove what is no longer used: old module versions and build-cache
    /// entries on a node, old snapshots and unreferenced blobs in a store.
    Gc(GcArgs),
    /// Copy the newest snapshot of every key from a mirror into a store, once.
    Replicate(ReplicateArgs),
    /// Watch the roots of the `[agent]` section and keep them in sync with
    /// peers and the mirror, until SIGTERM or SIGINT.
    Agent(AgentArgs),
}

/// `cachesync agent` (its roots, peers and schedules come from `--config`).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to listen on for peers (default 127.0.0.1:7416).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve Prometheus metrics on GET /metrics at this address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// `cachesync mirror`.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Address to listen on (default 127.0.0.1:7415).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Store directory (default ~/.local/share/cachesync/store), or
    /// s3://bucket/prefix with credentials from the AWS_* environment.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub store: Option<String>,
    /// Also serve the go-mod snapshots as a Go module proxy (HTTP) on this address.
    #[arg(long, value_name = "ADDR")]
    pub goproxy_listen: Option<String>,
    /// Mount the Go module proxy under this path, e.g. /go (default: the root).
    #[arg(long, value_name = "PATH")]
    pub goproxy_prefix: Option<String>,
    /// Serve only the go-mod snapshots of keys starting with this.
    #[arg(long, value_name = "PREFIX")]
    pub goproxy_keys: Option<String>,
    /// Serve Prometheus metrics on GET /metrics at this address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Replicate another mirror's snapshots into the store, on a schedule
    /// (token and TLS files from [client]).
    #[arg(long, value_name = "URL")]
    pub replicate_from: Option<String>,
    /// When to replicate: cron in UTC, e.g. "0 2 * * *".
    #[arg(long, value_name = "CRON")]
    pub replicate_cron: Option<String>,
    /// Or how often, e.g. 1h (a first run at start).
    #[arg(long, value_name = "DURATION")]
    pub replicate_interval: Option<String>,
    /// Replicate only keys starting with this.
    #[arg(long, value_name = "PREFIX")]
    pub replicate_keys: Option<String>,
}

/// `cachesync replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The source mirror, e.g. https://mirror.example:7415 (token and TLS files from [client]).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The store to copy into (default: mirror.store).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub store: Option<String>,
    /// Only keys starting with this.
    #[arg(long, value_name = "PREFIX")]
    pub keys: Option<String>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Flags of commands that talk to a mirror.
#[derive(Debug, Args)]
pub struct MirrorUrl {
    /// The mirror, e.g. http://127.0.0.1:7415.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
}

/// `cachesync push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub url: MirrorUrl,
    /// The key to commit under, e.g. gomod/linux-amd64/main.
    #[arg(long)]
    pub key: String,
    /// What the directory is: generic, go-mod, go-mod-trees, go-build.
    #[arg(long, default_value = "generic")]
    pub profile: String,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// The directory to push.
    pub dir: PathBuf,
}

/// `cachesync pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub url: MirrorUrl,
    /// The key to restore.
    #[arg(long)]
    pub key: String,
    /// Key prefixes to fall back to, in order, newest snapshot first.
    #[arg(long = "restore-key", value_name = "PREFIX")]
    pub restore_keys: Vec<String>,
    /// Remove local files the snapshot does not have (only what the
    /// snapshot's profile syncs: never extracted module trees under go-mod).
    #[arg(long, conflicts_with = "go_sum")]
    pub delete: bool,
    /// go-mod snapshots: restore only the module versions this go.sum names,
    /// and their list files (repeatable).
    #[arg(long = "go-sum", value_name = "FILE")]
    pub go_sum: Vec<PathBuf>,
    /// Restore only snapshots written by this token (repeatable): a release
    /// job never restores what a pull-request job wrote.
    #[arg(long = "trusted-writer", value_name = "NAME")]
    pub trusted_writers: Vec<String>,
    /// Exit 1 when no snapshot matches (by default a miss prints "no cache" and exits 0).
    #[arg(long)]
    pub fail_on_miss: bool,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// The directory to restore into (created if missing).
    pub dir: PathBuf,
}

/// `cachesync status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub url: MirrorUrl,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Show an agent's roots instead of a mirror's keys: the agent at URL, or
    /// without one at agent.listen of the configuration (default 127.0.0.1:7416).
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["mirror", "prefix"])]
    pub agent: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cachesync verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// What the directory is: go-mod (or go-mod-trees).
    #[arg(long, default_value = "go-mod")]
    pub profile: String,
    /// Also compare with the hashes of this go.sum (repeatable).
    #[arg(long = "go-sum", value_name = "FILE")]
    pub go_sum: Vec<PathBuf>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// The module cache (GOMODCACHE, $GOPATH/pkg/mod).
    pub dir: PathBuf,
}

/// `cachesync gc`: on a node (`--profile P DIR`) or on a mirror's store (`--store DIR`).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["profile", "store"])))]
pub struct GcArgs {
    /// Node: what DIR is, go-mod (or go-mod-trees) or go-build.
    #[arg(long, requires = "dir", conflicts_with = "store")]
    pub profile: Option<String>,
    /// Node: remove what was not used for this long (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Node: then remove the least recently used until the cache fits (e.g. 10GiB, 500MiB).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Node: never remove what this go.sum needs (repeatable; go-mod).
    #[arg(long = "keep-go-sum", value_name = "FILE")]
    pub keep_go_sum: Vec<PathBuf>,
    /// Mirror: the store directory to clean (default: mirror.store).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "")]
    pub store: Option<String>,
    /// Mirror: keep the newest N snapshots of each key.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u64>,
    /// Mirror: drop snapshots older than this (e.g. 90d); a key's newest always stays.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// List what would be removed and the bytes freed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Node: the cache directory.
    pub dir: Option<PathBuf>,
}

/// `cachesync scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// What the directory is: generic, go-mod, go-mod-trees, go-build.
    #[arg(long, default_value = "generic")]
    pub profile: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The directory to scan.
    pub dir: PathBuf,
}
