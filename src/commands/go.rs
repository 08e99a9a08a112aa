//! Adapters for the Go-specific commands: `verify`, and `gc` on a node's Go
//! caches or on a mirror's store.

use anyhow::Context;

use crate::cli::{GcArgs, VerifyArgs};
use crate::config::Settings;
use crate::profile::Profile;
use crate::profile::go::{gc, gosum, verify};
use crate::store::{Retention, Store};

/// `cachesync verify`: prints each problem on its own line, then fails if there was any.
pub(super) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    anyhow::ensure!(profile.is_go_mod(), "verify checks Go module caches: use --profile go-mod (not {profile})");
    let sums = gosum::read_all(&args.go_sum)?;
    let dir = args.dir.clone();
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<verify::Outcome> {
        let paths = verify::local_paths(&dir).with_context(|| format!("reading the module cache {}", dir.display()))?;
        let inventory = verify::inventory(paths.iter().map(String::as_str));
        Ok(verify::verify(&inventory, &verify::LocalSource { root: &dir }, &sums))
    })
    .await
    .expect("verify task panicked")?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        for p in &outcome.problems {
            println!("{p}");
        }
        println!(
            "{}: {} module versions, {} zips hashed, {} go.sum lines compared, {} problems",
            args.dir.display(),
            outcome.versions,
            outcome.zips,
            outcome.go_sum_lines_checked,
            outcome.problems.len()
        );
    }
    let n = outcome.problems.len();
    anyhow::ensure!(n == 0, "{} failed verification: {n} problem{}", args.dir.display(), if n == 1 { "" } else { "s" });
    Ok(())
}

/// `cachesync gc`: on a node's cache (`--profile P DIR`) or a store (`--store`).
pub(super) async fn gc(args: GcArgs, settings: Settings) -> anyhow::Result<()> {
    match args.profile {
        Some(_) => node_gc(args).await,
        None => store_gc(args, settings).await,
    }
}

fn duration(d: &Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    Ok(d.as_deref().map(crate::schedule::parse_duration).transpose()?)
}

/// Retention on a mirror's store.
async fn store_gc(args: GcArgs, settings: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.store.is_some(),
        "gc needs --profile P DIR (a node's cache) or --store [DIR] (a mirror's store)"
    );
    let keep_last = args.keep_last;
    anyhow::ensure!(keep_last != Some(0), "--keep-last 0 would drop every snapshot: a key keeps at least its newest");
    let policy = Retention { keep_last, max_age: duration(&args.max_age)?, grace: GRACE, dry_run: args.dry_run };
    let store = Store::open(&settings.mirror.store)?;
    let swept = store.sweep(&policy).await?;
    if args.json {
        println!("{}", serde_json::to_string(&swept)?);
        return Ok(());
    }
    let verb = if args.dry_run { "would drop" } else { "dropped" };
    for s in &swept.snapshots {
        println!("{verb} snapshot {s}");
    }
    println!(
        "{}: {verb} {} snapshots ({} kept), {} manifests and {} blobs, freeing {}",
        settings.mirror.store,
        swept.snapshots.len(),
        swept.snapshots_kept,
        swept.manifests,
        swept.blobs,
        super::human(swept.bytes_freed)
    );
    Ok(())
}

/// Old or surplus module versions and build-cache entries on a node.
async fn node_gc(args: GcArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.as_deref().unwrap_or_default().parse()?;
    let dir = args.dir.clone().context("gc --profile needs the cache directory")?;
    anyhow::ensure!(dir.is_dir(), "{}: not a directory", dir.display());
    anyhow::ensure!(
        args.older_than.is_some() || args.max_size.is_some(),
        "gc needs --older-than DURATION and/or --max-size SIZE"
    );
    let mut policy = gc::Policy { older_than: duration(&args.older_than)?, ..gc::Policy::default() };
    policy.max_size = args.max_size.as_deref().map(gc::parse_size).transpose().map_err(anyhow::Error::msg)?;
    policy.keep_go_sum(&gosum::read_all(&args.keep_go_sum)?);
    let dry_run = args.dry_run;
    let (d, plan) = tokio::task::spawn_blocking(move || -> anyhow::Result<(std::path::PathBuf, gc::Plan)> {
        let units = match profile {
            p if p.is_go_mod() => gc::module_units(&dir),
            Profile::GoBuild => gc::build_units(&dir),
            other => anyhow::bail!("gc cleans Go caches: use --profile go-mod or go-build (not {other})"),
        }
        .with_context(|| format!("reading {}", dir.display()))?;
        let plan = gc::choose(units, &policy, std::time::SystemTime::now());
        if !dry_run {
            gc::execute(&dir, &plan)?;
        }
        Ok((dir, plan))
    })
    .await
    .expect("gc task panicked")?;
    if args.json {
        println!("{}", serde_json::json!({ "dry_run": dry_run, "plan": plan }));
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for u in &plan.remove {
        let when = crate::schedule::iso_utc(u.last_used.saturating_mul(1000));
        println!("{verb} {} ({}, last used {when})", u.name, super::human(u.bytes));
    }
    println!(
        "{}: {verb} {} items, freeing {}; {} left",
        d.display(),
        plan.remove.len(),
        super::human(plan.bytes_freed),
        super::human(plan.bytes_left)
    );
    Ok(())
}

/// How old an unreferenced blob must be before a store clean-up removes it:
/// pushes upload blobs before they commit the snapshot that names them.
const GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
