//! The `cachesync` binary: parse flags, load settings, set up logging, run
//! the command, and map the result to an exit code (0 ok, 1 failure, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cachesync::cli::{Cli, Command};
use cachesync::config::{self, Settings};

fn flag_overrides(cli: &Cli) -> Vec<(&'static str, String)> {
    let mut flags = Vec::new();
    let mut add = |key, value: &Option<String>| {
        if let Some(v) = value {
            flags.push((key, v.clone()));
        }
    };
    add("log.level", &cli.log_level);
    add("log.format", &cli.log_format);
    match &cli.command {
        Command::Mirror(m) => {
            add("mirror.listen", &m.listen);
            add("mirror.store", &m.store);
            add("mirror.goproxy_listen", &m.goproxy_listen);
            add("mirror.goproxy_prefix", &m.goproxy_prefix);
            add("mirror.goproxy_keys", &m.goproxy_keys);
            add("mirror.metrics_listen", &m.metrics_listen);
            add("replicate.from", &m.replicate_from);
            add("replicate.cron", &m.replicate_cron);
            add("replicate.interval", &m.replicate_interval);
            add("replicate.keys", &m.replicate_keys);
        }
        Command::Replicate(r) => {
            add("client.mirror", &Some(r.from.clone()));
            add("mirror.store", &r.store);
            add("replicate.keys", &r.keys);
        }
        Command::Push(a) => add("client.mirror", &a.url.mirror),
        Command::Pull(a) => add("client.mirror", &a.url.mirror),
        Command::Status(a) => add("client.mirror", &a.url.mirror),
        Command::Agent(a) => {
            add("agent.listen", &a.listen);
            add("agent.metrics_listen", &a.metrics_listen);
        }
        Command::Gc(a) => add("mirror.store", &a.store.clone().filter(|s| !s.is_empty())),
        Command::Scan(_) | Command::Verify(_) => {}
    }
    flags
}

fn init_tracing(settings: &Settings, long_running: bool) -> Result<(), String> {
    let level = match settings.log.level.as_str() {
        "" if long_running => "info",
        "" => "warn",
        level => level,
    };
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid configuration: log.level = {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
    Ok(())
}

/// The error and its causes on one line, each cause once: library errors
/// often already include their source in their own message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = flag_overrides(&cli);
    let settings = match config::load(cli.config.as_deref(), std::env::vars(), &flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cachesync: {e}");
            return ExitCode::from(2);
        }
    };
    let daemon = matches!(cli.command, Command::Mirror(_) | Command::Agent(_));
    if let Err(e) = init_tracing(&settings, daemon) {
        eprintln!("cachesync: {e}");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Command::Agent(_)) {
        cachesync::agent::use_one_malloc_arena();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachesync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker thread, not this one: the tasks it wakes and is woken by run
    // there, and a wake-up between workers costs less than parking this thread.
    let run = runtime.spawn(cachesync::commands::run(cli.command, settings));
    match runtime.block_on(run).unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
        // A command that finished has nothing left running: exit without
        // winding the runtime's threads down and handing their memory back
        // (a few ms per push or pull). Stdout is flushed by `exit`.
        Ok(()) if !daemon => std::process::exit(0),
        Ok(()) => ExitCode::SUCCESS,
        // Dropping the runtime waits for blocking tasks, which clean up after
        // a command that stopped half way (a pull's staging directory).
        Err(e) => {
            eprintln!("cachesync: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
