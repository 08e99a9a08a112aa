//! Adapters for the Go-specific commands: `verify` (and the go.sum files
//! that `pull --go-sum` reads).

use anyhow::Context;

use crate::cli::VerifyArgs;
use crate::profile::Profile;
use crate::profile::go::{gosum, verify};

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
