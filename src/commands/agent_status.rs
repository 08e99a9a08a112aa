//! `cachesync status --agent`: an agent's roots, one line each, with their
//! destinations indented below (or one JSON object).

use anyhow::Context;

use super::{connect_options, human};
use crate::agent::{DestStatus, RootStatus};
use crate::config::Settings;
use crate::rpc::client::Client;
use crate::schedule::iso_utc;

/// Asks the agent at `url` (empty: the configuration's `agent.listen`) for
/// its roots and prints them.
pub(super) async fn show(url: &str, json: bool, settings: &Settings) -> anyhow::Result<()> {
    let url = match url {
        "" => local_agent(settings)?,
        url => url.to_string(),
    };
    let mut client = Client::connect_with(&url, &connect_options(settings)?).await?;
    let roots = client.agent_status().await?;
    if json {
        println!("{}", serde_json::to_string(&serde_json::json!({ "agent": url, "roots": roots }))?);
        return Ok(());
    }
    if roots.is_empty() {
        println!("{url}: no roots");
    }
    for r in &roots {
        println!("{}", root_line(r));
        for d in &r.destinations {
            println!("  {}", dest_line(d));
        }
    }
    Ok(())
}

/// The URL of the agent this configuration describes.
fn local_agent(settings: &Settings) -> anyhow::Result<String> {
    let config = settings.agent.resolve()?;
    let addr = config.listen.context("no agent URL given, and agent.listen is empty: pass --agent URL")?;
    Ok(crate::agent::loopback_url(addr))
}

fn when(unix_ms: i64) -> String {
    if unix_ms == 0 { "never".into() } else { iso_utc(unix_ms) }
}

fn root_line(r: &RootStatus) -> String {
    let mut line = format!(
        "{}: {}  {}  key {} ({}, {}, {})  {} files, {}  last success {}  next run {}  last push {} files, {} sent  {} dirty",
        r.name,
        r.state.as_str(),
        r.path,
        r.key,
        r.profile,
        r.direction,
        r.schedule,
        r.files,
        human(r.bytes),
        when(r.last_success_unix_ms),
        when(r.next_run_unix_ms),
        r.last_push_files,
        human(r.last_push_bytes),
        r.dirty,
    );
    if let Some(e) = &r.last_error {
        line.push_str(&format!("  last error: {e}"));
    }
    line
}

fn dest_line(d: &DestStatus) -> String {
    let holds = match &d.holds {
        Some(id) => format!("holds {}", &id[..id.len().min(16)]),
        None => "holds nothing known".into(),
    };
    let mut line = format!("{} {}: {}, {holds}", d.kind, d.url, if d.up_to_date { "up to date" } else { "behind" });
    if d.backing_off {
        line.push_str(&format!("; backing off after {} failures, retry at {}", d.failures, iso_utc(d.retry_unix_ms)));
    }
    if let Some(e) = &d.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}
