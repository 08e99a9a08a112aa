//! One short adapter per subcommand: settings in, library call, output out.
//! The only place (with `main.rs`) where `anyhow` is used.

mod agent_status;
mod go;

use std::time::Instant;

use anyhow::Context;

use crate::cli::{Command, PullArgs, PushArgs, ReplicateArgs, ScanArgs, StatusArgs};
use crate::config::Settings;
use crate::hash::cache::HashCache;
use crate::mirror::Mirror;
use crate::profile::Profile;
use crate::replicate::{Source, replicate_once};
use crate::rpc::client::{Client, ConnectOptions};
use crate::store::Store;
use crate::sync::{self, PullRequest, PushRequest, Report, SyncError, SyncOptions};

/// Runs one command with its settings.
///
/// # Errors
///
/// Whatever the command hit, as one chain of context.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Mirror(_) => mirror(settings).await,
        Command::Push(args) => push(args, settings).await,
        Command::Pull(args) => pull(args, settings).await,
        Command::Status(args) => status(args, settings).await,
        Command::Scan(args) => scan(args),
        Command::Verify(args) => go::verify(args).await,
        Command::Gc(args) => go::gc(args, settings).await,
        Command::Replicate(args) => replicate(args, settings).await,
        Command::Agent(_) => agent(settings).await,
    }
}

fn sync_options(settings: &Settings, json: bool) -> SyncOptions {
    SyncOptions {
        delta_min_size: settings.transfer.delta_min_size,
        compression_level: settings.transfer.compression_level,
        fsync: settings.transfer.fsync,
        state_dir: settings.state_dir.clone(),
        progress: !json,
        connect_timeout: settings.connect_timeout(),
        streams: settings.transfer.streams,
        fuzzy: settings.transfer.fuzzy,
        unpack: settings.transfer.unpack,
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<Client> {
    Ok(Client::connect_with(&settings.client.mirror, &connect_options(settings)?).await?)
}

/// How to reach a mirror: the `[client]` timeout, token and TLS files.
fn connect_options(settings: &Settings) -> anyhow::Result<ConnectOptions> {
    ConnectOptions::from_settings(&settings.client)
        .map_err(|(file, e)| anyhow::anyhow!("reading the token file {file}: {e}"))
}

/// Replication from `from` into the mirror's store, with the client settings.
fn replication_source(settings: &Settings, from: &str) -> anyhow::Result<Source> {
    Ok(Source {
        url: from.to_string(),
        connect: connect_options(settings)?,
        keys: settings.replicate.keys.clone(),
        max_blob_bytes: settings.mirror.max_blob_bytes,
    })
}

async fn mirror(settings: Settings) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signals().context("installing signal handlers")?;
    let mut mirror = Mirror::bind(&settings.mirror, &settings.transfer).await?;
    if let Some(schedule) = settings.replicate.schedule()? {
        mirror = mirror.with_replication(replication_source(&settings, &settings.replicate.from)?, schedule);
    }
    mirror.run(shutdown).await?;
    Ok(())
}

async fn agent(settings: Settings) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signals().context("installing signal handlers")?;
    let agent = crate::agent::Agent::bind(&settings).await?;
    agent.run(shutdown).await?;
    Ok(())
}

async fn push(args: PushArgs, settings: Settings) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    let req = PushRequest { root: args.dir.clone(), key: args.key, profile };
    req.validate()?;
    let mut client = connect(&settings).await?;
    let report = sync::push(&mut client, &req, &sync_options(&settings, args.json)).await?;
    print_report(&report, args.json, "pushed", &args.dir);
    Ok(())
}

async fn pull(args: PullArgs, settings: Settings) -> anyhow::Result<()> {
    let req = PullRequest {
        root: args.dir.clone(),
        key: args.key,
        restore_prefixes: args.restore_keys,
        delete: args.delete,
        trusted_writers: args.trusted_writers,
    };
    req.validate()?;
    let go_sum = crate::profile::go::gosum::read_all(&args.go_sum)?;
    let mut client = connect(&settings).await?;
    let opts = sync_options(&settings, args.json);
    let pulled = if args.go_sum.is_empty() {
        sync::pull(&mut client, &req, &opts).await
    } else {
        sync::pull_go_sum(&mut client, &req, &opts, &go_sum).await
    };
    let report = match pulled {
        Err(SyncError::Miss(key)) if !args.fail_on_miss => {
            let miss = Report { key: key.clone(), requested_key: key.clone(), ..Report::default() };
            step_outputs(&miss)?;
            if args.json {
                println!("{}", serde_json::to_string(&miss).expect("reports serialize"));
            } else {
                println!("no cache for key {key:?} (nor for any restore key); {} left as it was", args.dir.display());
            }
            return Ok(());
        }
        other => other?,
    };
    step_outputs(&report)?;
    for m in report.missing.iter().filter(|_| !args.json) {
        eprintln!("cachesync: warning: the snapshot lacks {m}, which the go.sum files name");
    }
    print_report(&report, args.json, "restored", &args.dir);
    Ok(())
}

/// In a GitHub Actions step (`GITHUB_OUTPUT` set), the pull's outputs:
/// `cache-hit` (the exact key was restored) and `restored-key`.
fn step_outputs(r: &Report) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("GITHUB_OUTPUT") else { return Ok(()) };
    let text = format!("cache-hit={}\nrestored-key={}\n", r.cache_hit, r.restored_key);
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("writing step outputs to {}", std::path::Path::new(&path).display()))
}

fn print_report(r: &Report, json: bool, verb: &str, dir: &std::path::Path) {
    if json {
        println!("{}", serde_json::to_string(r).expect("reports serialize"));
        return;
    }
    let what = if r.unchanged { " (unchanged)" } else { "" };
    let unpacked = match r.blobs_unpacked {
        0 => String::new(),
        n => format!(", {n} unpacked from zips"),
    };
    println!(
        "{verb} {} as {}#{}{what}: {} files, {}; {} sent, {} received in {:.1}s ({} whole, {} as deltas{unpacked})",
        dir.display(),
        r.key,
        r.generation,
        r.files,
        human(r.bytes),
        human(r.bytes_sent),
        human(r.bytes_received),
        r.duration_ms as f64 / 1000.0,
        r.blobs_whole,
        r.blobs_delta,
    );
}

async fn status(args: StatusArgs, settings: Settings) -> anyhow::Result<()> {
    if let Some(url) = &args.agent {
        return agent_status::show(url, args.json, &settings).await;
    }
    let mut client = connect(&settings).await?;
    let list = client.list_keys(&args.prefix).await?;
    if args.json {
        println!("{}", serde_json::to_string(&serde_json::json!({ "mirror": client.url(), "keys": list }))?);
        return Ok(());
    }
    if list.is_empty() {
        println!("{}: no snapshots", client.url());
    }
    for s in list {
        let from = if s.base.is_empty() { String::new() } else { format!(" from {}", s.base) };
        let when = crate::schedule::iso_utc(s.created_unix_ms);
        println!(
            "{}#{}  {} files  {}  profile {}  written by {}{from} at {when}  manifest {}",
            s.key,
            s.generation,
            s.files,
            human(s.bytes),
            s.profile,
            if s.writer.is_empty() { "anonymous" } else { &s.writer },
            &s.manifest[..16]
        );
    }
    Ok(())
}

async fn replicate(args: ReplicateArgs, settings: Settings) -> anyhow::Result<()> {
    let store = Store::open(&settings.mirror.store)?;
    store.check().await?;
    let source = replication_source(&settings, &settings.client.mirror)?;
    let done = replicate_once(&source, &store).await?;
    if args.json {
        println!("{}", serde_json::to_string(&done).expect("reports serialize"));
    } else {
        println!(
            "replicated {} of {} keys from {} into {}: {} blobs, {} received",
            done.snapshots,
            done.keys,
            source.url,
            settings.mirror.store,
            done.blobs,
            human(done.bytes_received)
        );
    }
    Ok(())
}

fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    let started = Instant::now();
    let scanned = crate::scan::scan(&args.dir, profile, &mut HashCache::default())?;
    let secs = started.elapsed().as_secs_f64();
    let m = &scanned.manifest;
    let summary = serde_json::json!({
        "files": m.file_count(), "bytes": m.total_bytes(), "entries": m.entries().len(),
        "manifest": m.id().to_hex(), "duration_ms": (secs * 1000.0) as u64,
        "hash_gb_per_s": scanned.hashed_bytes as f64 / secs.max(1e-9) / 1e9,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{}: {} files, {}, manifest {} ({:.2}s)",
            args.dir.display(),
            m.file_count(),
            human(m.total_bytes()),
            m.id(),
            secs
        );
    }
    Ok(())
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
