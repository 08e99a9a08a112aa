//! The `cachesync` binary as a user meets it: every failure is one line on
//! stderr that says what and where, with a non-zero exit and never a panic or
//! a backtrace; `--json` prints one object; nothing but the answer is printed
//! when output is not a terminal.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::helpers::*;

/// What a command left behind: exit code (-1 if killed by a signal), stdout, stderr.
pub(crate) type Outcome = (i32, String, String);

/// How long any one command may take before it is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the binary with `args` and `env` in a clean environment: a private
/// state and data directory, no colours, backtraces on (so a panic would
/// show one), and no `CACHESYNC_*` variable but those in `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    run_via(&[], args, env)
}

/// [`run`] behind a wrapper command (`setpriv …` to drop privileges).
fn run_via(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = match wrapper.split_first() {
        None => Command::new(bin()),
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin());
            c
        }
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CACHESYNC_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("XDG_STATE_HOME", home.path().join("state"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: `pid` is our own child, not yet reaped (its waiter is blocked).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("cachesync {args:?} still running after {DEADLINE:?}");
        }
    };
    let text = |b: Vec<u8>| String::from_utf8(b).expect("output is UTF-8");
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

/// [`run`] off the runtime, so an in-process mirror keeps serving meanwhile.
pub(crate) async fn run_async(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .unwrap()
}

/// stderr is exactly one line holding every fragment, and no sign of a panic.
fn assert_one_line_error(stderr: &str, must_contain: &[&str]) {
    let line = stderr.trim();
    assert!(!line.is_empty(), "expected an error line, stderr is empty");
    assert_eq!(line.lines().count(), 1, "expected one line, got:\n{stderr}");
    for fragment in must_contain {
        assert!(line.contains(fragment), "{fragment:?} missing from: {line}");
    }
    for sign in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!line.contains(sign), "{sign:?} in: {line}");
    }
}

/// The line states each cause once: `{e:#}` over an error whose message
/// already embeds its `#[source]` would print "X: why: why".
fn assert_says_it_once(stderr: &str) {
    let parts: Vec<&str> = stderr.trim().split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "the same cause twice in: {}", stderr.trim());
    }
}

/// A failure: the expected exit code and one line with every fragment, said once.
pub(crate) fn assert_fails(outcome: &Outcome, code: i32, must_contain: &[&str]) {
    let (got, stdout, stderr) = outcome;
    assert_eq!(*got, code, "exit code; stdout: {stdout:?} stderr: {stderr:?}");
    assert_eq!(stdout, "", "nothing on stdout when failing");
    assert_one_line_error(stderr, must_contain);
    assert_says_it_once(stderr);
}

/// A configuration or usage error exits 2, anything that fails later exits 1.
const USAGE: i32 = 2;
pub(crate) const FAILURE: i32 = 1;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes incompressible files and returns their total size.
fn random_tree(root: &Path) -> u64 {
    let files = [("a.bin", 300 << 10), ("sub/b.bin", 70 << 10), ("sub/deeper/c.bin", 5 << 10), ("empty", 0)];
    for (i, (rel, len)) in files.iter().enumerate() {
        write(root, rel, &random_bytes(i as u64 + 10, *len));
    }
    files.iter().map(|(_, len)| *len as u64).sum()
}

/// Parses stdout as exactly one JSON object and returns it.
pub(crate) fn one_json_object(stdout: &str) -> serde_json::Value {
    assert_eq!(stdout.lines().count(), 1, "expected one line of JSON, got:\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(v.is_object(), "not an object: {v}");
    v
}

fn number(v: &serde_json::Value, field: &str) -> u64 {
    v.get(field).and_then(serde_json::Value::as_u64).unwrap_or_else(|| panic!("no numeric {field:?} in {v}"))
}

fn is_empty_or_missing(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[test]
fn unreachable_mirror_is_one_line_naming_the_address() {
    let t = tempfile::tempdir().unwrap();
    let dst = t.path().join("dst");
    let out = run(&["pull", "--mirror", "http://127.0.0.1:1", "--key", "k", s(&dst)], &[]);
    assert_fails(&out, FAILURE, &["cannot reach the mirror", "127.0.0.1:1"]);
    assert!(is_empty_or_missing(&dst), "a failed pull leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_no_cache_or_one_line_with_fail_on_miss() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let dst = t.path().join("dst");
    let outputs = t.path().join("github_output");
    let env = [("GITHUB_OUTPUT", s(&outputs))];
    let (code, stdout, stderr) =
        run_async(&["pull", "--mirror", &mirror.url, "--key", "never/pushed", s(&dst)], &env).await;
    assert_eq!((code, stderr.as_str()), (0, ""), "a miss is not a failure for a CI job");
    assert!(stdout.starts_with("no cache for key \"never/pushed\"") && stdout.lines().count() == 1, "{stdout}");
    assert_eq!(std::fs::read_to_string(&outputs).unwrap(), "cache-hit=false\nrestored-key=\n");
    let out =
        run_async(&["pull", "--mirror", &mirror.url, "--key", "never/pushed", "--fail-on-miss", s(&dst)], &[]).await;
    assert_fails(&out, FAILURE, &["never/pushed", "no snapshot"]);
    assert!(is_empty_or_missing(&dst), "a missed pull leaves nothing behind");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_are_refused_in_one_line() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let src = t.path().join("src");
    write(&src, "f", b"data");
    for key in ["../x", "a b"] {
        let out = run_async(&["pull", "--mirror", &mirror.url, "--key", key, s(&t.path().join("dst"))], &[]).await;
        assert_fails(&out, FAILURE, &["invalid key"]);
        let out = run_async(&["push", "--mirror", &mirror.url, "--key", key, s(&src)], &[]).await;
        assert_fails(&out, FAILURE, &["invalid key"]);
    }
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_what_is_not_a_directory_names_the_path() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let missing = t.path().join("no-such-dir");
    let file = t.path().join("a-file");
    write(t.path(), "a-file", b"not a tree");
    for path in [&missing, &file] {
        let out = run_async(&["push", "--mirror", &mirror.url, "--key", "k", s(path)], &[]).await;
        assert_fails(&out, FAILURE, &[s(path), "not a directory"]);
    }
    mirror.stop().await;
}

#[test]
fn bad_configuration_values_name_the_setting() {
    let out = run(&["scan", "/nonexistent-cachesync-root"], &[("CACHESYNC_TRANSFER__COMPRESSION_LEVEL", "99")]);
    assert_fails(&out, USAGE, &["compression_level"]);
    let out = run(&["scan", "/nonexistent-cachesync-root"], &[("CACHESYNC_TRANSFER__DELTA_MIN_SIZE", "lots")]);
    assert_fails(&out, USAGE, &["delta_min_size"]);
    let out = run(&["scan", "/nonexistent-cachesync-root"], &[("CACHESYNC_TRANSFER__FUZZY", "sometimes")]);
    assert_fails(&out, USAGE, &["transfer.fuzzy", "\"sometimes\": expected remote, always or never"]);
    let out = run(&["scan", "/nonexistent-cachesync-root"], &[("CACHESYNC_BOGUS", "1")]);
    assert_fails(&out, USAGE, &["bogus"]);
    let out = run(&["status", "--mirror", "ftp://x"], &[]);
    assert_fails(&out, USAGE, &["ftp://x"]);
}

#[test]
fn bad_configuration_files_name_the_file_or_the_field() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("cachesync.toml");
    std::fs::write(&file, "[transfer]\ndelta_min_sise = 1\n").unwrap();
    let out = run(&["--config", s(&file), "scan", "/nonexistent-cachesync-root"], &[]);
    assert_fails(&out, USAGE, &["delta_min_sise"]);
    let out = run(&["--config", "/nonexistent.toml", "scan", "/nonexistent-cachesync-root"], &[]);
    assert_fails(&out, USAGE, &["/nonexistent.toml"]);
}

#[test]
fn a_mirror_that_cannot_listen_says_so() {
    let t = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["mirror", "--listen", &addr, "--store", s(&t.path().join("store"))], &[]);
    assert_fails(&out, FAILURE, &["cannot listen", &addr]);
}

#[test]
fn a_mirror_whose_store_cannot_be_created_names_the_path() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "file", b"a regular file");
    let store = t.path().join("file/sub");
    let out = run(&["mirror", "--listen", "127.0.0.1:0", "--store", s(&store)], &[]);
    assert_fails(&out, FAILURE, &[s(&store)]);
}

#[test]
fn an_unknown_profile_is_one_line() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "f", b"data");
    let (code, stdout, stderr) =
        run(&["push", "--mirror", "http://127.0.0.1:1", "--key", "k", "--profile", "nope", s(t.path())], &[]);
    assert!(matches!(code, FAILURE | USAGE), "exit code {code}; stderr: {stderr}");
    assert_eq!(stdout, "");
    assert_one_line_error(&stderr, &["unknown profile", "nope"]);
    assert_says_it_once(&stderr);
    let (code, _, stderr) = run(&["scan", "--profile", "nope", s(t.path())], &[]);
    assert!(matches!(code, FAILURE | USAGE), "exit code {code}; stderr: {stderr}");
    assert_one_line_error(&stderr, &["unknown profile", "nope"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_error_on_pull_names_the_path() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "f", b"data");
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let (code, _, stderr) = run_async(&["push", "--mirror", &mirror.url, "--key", "k", s(&src)], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    write(t.path(), "file", b"a regular file where a directory should be");
    let dst = t.path().join("file/dst");
    let out = run_async(&["pull", "--mirror", &mirror.url, "--key", "k", s(&dst)], &[]).await;
    assert_fails(&out, FAILURE, &[s(&dst), "Not a directory"]);
    mirror.stop().await;
}

#[test]
fn scanning_a_missing_directory_names_it() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    let out = run(&["scan", s(&missing)], &[]);
    assert_fails(&out, FAILURE, &[s(&missing)]);
}

#[test]
fn an_unreadable_file_names_the_path() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "secret", b"data");
    set_mode(&t.path().join("secret"), 0o000);
    set_mode(t.path(), 0o755);
    // Root reads files whatever their mode: drop to nobody to meet a real EACCES.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root { &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] } else { &[] };
    let out = run_via(wrapper, &["scan", s(t.path())], &[]);
    assert_fails(&out, FAILURE, &["secret"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_push_and_pull_print_one_object_with_sizes_and_wire_bytes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let size = random_tree(&src);
    let mirror = spawn_mirror(&t.path().join("store")).await;

    let (code, stdout, stderr) =
        run_async(&["push", "--mirror", &mirror.url, "--key", "ci/json", "--json", s(&src)], &[]).await;
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    let pushed = one_json_object(&stdout);
    assert_eq!(number(&pushed, "files"), 4);
    assert_eq!(number(&pushed, "bytes"), size);
    assert!(number(&pushed, "bytes_sent") > size, "incompressible content crossed the wire: {pushed}");
    number(&pushed, "bytes_received");
    number(&pushed, "duration_ms");

    let (code, stdout, stderr) =
        run_async(&["pull", "--mirror", &mirror.url, "--key", "ci/json", "--json", s(&dst)], &[]).await;
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    let pulled = one_json_object(&stdout);
    assert_eq!(number(&pulled, "files"), 4);
    assert_eq!(number(&pulled, "bytes"), size);
    assert!(number(&pulled, "bytes_received") > size, "incompressible content crossed the wire: {pulled}");
    number(&pulled, "bytes_sent");
    number(&pulled, "duration_ms");
    assert_same_tree(&src, &dst);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_push_prints_one_line_and_status_lists_the_key() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    random_tree(&src);
    let mirror = spawn_mirror(&t.path().join("store")).await;

    let (code, stdout, stderr) = run_async(&["push", "--mirror", &mirror.url, "--key", "ci/plain", s(&src)], &[]).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stderr, "", "no progress bar or log lines when stderr is not a terminal");
    assert_eq!(stdout.lines().count(), 1, "one line:\n{stdout}");
    assert!(stdout.contains("ci/plain"), "{stdout}");

    let (code, stdout, stderr) = run_async(&["status", "--mirror", &mirror.url], &[]).await;
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "one key:\n{stdout}");
    assert!(stdout.starts_with("ci/plain#1"), "{stdout}");
    mirror.stop().await;
}

#[test]
fn scan_json_prints_files_and_bytes() {
    let t = tempfile::tempdir().unwrap();
    let size = random_tree(t.path());
    let (code, stdout, stderr) = run(&["scan", s(t.path()), "--json"], &[]);
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    let v = one_json_object(&stdout);
    assert_eq!(number(&v, "files"), 4);
    assert_eq!(number(&v, "bytes"), size);
}

#[test]
fn usage_errors_exit_2() {
    let (code, stdout, stderr) = run(&["push", "--key", "k"], &[]);
    assert_eq!(code, USAGE, "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("<DIR>"), "names the missing argument: {stderr}");
}
