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
    /// What the directory is: generic, go-mod, go-build.
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
    /// Remove local files the snapshot does not have.
    #[arg(long)]
    pub delete: bool,
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
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cachesync scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// What the directory is: generic, go-mod, go-build.
    #[arg(long, default_value = "generic")]
    pub profile: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The directory to scan.
    pub dir: PathBuf,
}
