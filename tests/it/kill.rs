//! Kill -9 either side in the middle of a push or a pull: every file at the
//! destination is its old or its new content (never a part), the mirror's
//! refs name only complete snapshots, and running the command again finishes
//! the job. The side that is killed is always a real `cachesync` process.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cachesync::profile::Profile;
use cachesync::store::SnapshotRecord;
use cachesync::sync::{self, PullRequest, PushRequest, SyncOptions};

use crate::helpers::*;

const KEY: &str = "kill/tree";
/// Big enough that a debug build is still moving content when it is killed.
const BIG: usize = 32 << 20;
const BIG_FILES: u64 = 6;
/// How long a process may take for a whole job before the test gives up.
const JOB_SECS: u64 = 60;
/// Files are moved whole: computing a delta between two unrelated 32 MiB
/// files takes a debug build some 13 s, and what a kill may interrupt (staged
/// bytes, renames into place, the commit) is the same for both kinds.
const NO_DELTAS: u64 = 1 << 40;

fn opts(state: &Path) -> SyncOptions {
    SyncOptions { delta_min_size: NO_DELTAS, ..options(state) }
}

/// Writes version `v` of the tree: every big file and `version.txt` differ between versions.
fn write_tree(root: &Path, v: u64) {
    for i in 0..BIG_FILES {
        write(root, &format!("big/{i}.bin"), &random_bytes(v * 1000 + i, BIG));
    }
    write(root, "version.txt", format!("v{v}\n").as_bytes());
    write(root, "small/readme.txt", b"the same in every version\n");
    write(root, "small/deep/er/empty", b"");
}

/// Removes terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects a pipe's text, line by line, while the process runs.
fn capture(stream: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        let mut stream = BufReader::new(stream);
        let mut line = Vec::new();
        while matches!(stream.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            sink.lock().unwrap().push_str(&strip_ansi(&String::from_utf8_lossy(&line)));
            line.clear();
        }
    });
    (text, reader)
}

/// A `cachesync` process; killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub(crate) struct Proc {
    what: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    pub(crate) stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `cachesync ARGS` with its hash cache under `state`.
    pub(crate) fn start(state: &Path, args: &[&OsStr]) -> Proc {
        Proc::start_env(state, args, &[])
    }

    /// Like `start`, with more environment variables.
    pub(crate) fn start_env(state: &Path, args: &[&OsStr], env: &[(String, String)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CACHESYNC_")) {
            cmd.env_remove(k);
        }
        cmd.args(args).env("XDG_STATE_HOME", state).env("NO_COLOR", "1");
        cmd.env("CACHESYNC_TRANSFER__DELTA_MIN_SIZE", NO_DELTAS.to_string());
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (stdout, out_reader) = capture(child.stdout.take().unwrap());
        let (stderr, err_reader) = capture(child.stderr.take().unwrap());
        let what = format!("cachesync {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        Proc { what, child, stdout, stderr, readers: vec![out_reader, err_reader] }
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn output(&self) -> String {
        format!("{}\n--- stdout:\n{}--- stderr:\n{}", self.what, self.stdout.lock().unwrap(), self.stderr())
    }

    /// Waits until `cond` holds; panics if the process ends first.
    pub(crate) async fn wait_while_running(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        wait_for(JOB_SECS, what, || {
            cond() || {
                assert!(self.running(), "the process ended before {what}: {}", self.output());
                false
            }
        })
        .await;
    }

    /// kill -9, after checking the process was still at work (else nothing was interrupted).
    pub(crate) fn kill_mid_job(&mut self) {
        assert!(self.running(), "finished before it could be killed, so nothing was interrupted: {}", self.output());
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.drain();
    }

    /// Waits for the process to end on its own and collects all its output.
    pub(crate) async fn exit(&mut self) -> ExitStatus {
        let what = format!("{} to exit", self.what);
        wait_for(JOB_SECS, &what, || !self.running()).await;
        self.drain();
        self.child.wait().unwrap()
    }

    /// Waits for the process and checks it succeeded.
    pub(crate) async fn succeed(mut self) {
        let status = self.exit().await;
        assert!(status.success(), "{status}: {}", self.output());
    }

    /// Sends a signal (SIGTERM, SIGINT) to the process.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cachesync push|pull --mirror URL --key KEY DIR`.
fn sync_proc(command: &str, state: &Path, url: &str, dir: &Path) -> Proc {
    let args: [&OsStr; 6] =
        [command.as_ref(), "--mirror".as_ref(), url.as_ref(), "--key".as_ref(), KEY.as_ref(), dir.as_ref()];
    Proc::start(state, &args)
}

/// A mirror process over `store`, and its URL once it listens.
async fn mirror_proc(state: &Path, store: &Path) -> (Proc, String) {
    mirror_proc_env(state, store.as_ref(), &[]).await
}

/// A mirror process over `store` (a directory or URL) with more environment variables.
pub(crate) async fn mirror_proc_env(state: &Path, store: &OsStr, env: &[(String, String)]) -> (Proc, String) {
    let args: [&OsStr; 5] = ["mirror".as_ref(), "--listen".as_ref(), "127.0.0.1:0".as_ref(), "--store".as_ref(), store];
    let mut mirror = Proc::start_env(state, &args, env);
    let log = mirror.stderr.clone();
    mirror.wait_while_running("the mirror to listen", || log.lock().unwrap().contains("mirror listening")).await;
    let log = mirror.stderr();
    let line = log.lines().find(|l| l.contains("mirror listening")).unwrap();
    let addr =
        line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).unwrap_or_else(|| panic!("no addr= in {line:?}"));
    (mirror, format!("http://{addr}"))
}

async fn resolve(url: &str) -> Option<SnapshotRecord> {
    connect(url).await.resolve(KEY, &[]).await.unwrap()
}

async fn push_lib(url: &str, key: &str, src: &Path, state: &Path) {
    let req = PushRequest { root: src.to_path_buf(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut connect(url).await, &req, &opts(state)).await.unwrap();
}

async fn pull_lib(url: &str, key: &str, dst: &Path, state: &Path) {
    let req = PullRequest {
        root: dst.to_path_buf(),
        key: key.into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    sync::pull(&mut connect(url).await, &req, &opts(state)).await.unwrap();
}

/// The snapshot records of `KEY` in a store (the newest one is the key's ref).
fn snapshot_records(store: &Path) -> Vec<PathBuf> {
    let dir = store.join("keys").join(KEY).join("@snap");
    std::fs::read_dir(dir).into_iter().flatten().map(|e| e.unwrap().path()).collect()
}

pub(crate) fn blob_count(store: &Path) -> usize {
    walkdir::WalkDir::new(store.join("blobs")).into_iter().flatten().filter(|e| e.file_type().is_file()).count()
}

/// True once some content has landed in a staging directory.
fn staging_has_content(dir: &Path) -> bool {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter_map(|e| e.metadata().ok()).any(|m| m.is_file() && m.len() > 0)
}

/// True once process `pid` (`self` for this one) has a file of directory
/// `dir` open with some content: an unnamed one (`O_TMPFILE`) shows in
/// `/proc` as `dir/#inode (deleted)`.
fn open_with_content(pid: &str, dir: &Path) -> bool {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
    fds.map(|fd| fd.path()).any(|fd| {
        std::fs::read_link(&fd).is_ok_and(|target| target.starts_with(dir))
            && std::fs::metadata(&fd).is_ok_and(|m| m.is_file() && m.len() > 0)
    })
}

/// True once the mirror (process `pid`) has stored a new blob and is taking
/// in the next one, staged by name or unnamed.
fn mirror_mid_push(pid: &str, store: &Path, blobs_before: usize) -> bool {
    let staging = store.join("tmp");
    blob_count(store) > blobs_before && (staging_has_content(&staging) || open_with_content(pid, &staging))
}

/// How many big files at `dst` carry the mtime of their version in `new`
/// (a cheap sign that a pull has placed them).
fn big_files_placed(dst: &Path, new: &Path) -> usize {
    let mtime = |root: &Path, i| std::fs::metadata(root.join(format!("big/{i}.bin"))).and_then(|m| m.modified()).ok();
    (0..BIG_FILES).filter(|i| mtime(dst, *i).is_some() && mtime(dst, *i) == mtime(new, *i)).count()
}

/// The blake3 of every regular file, by path, skipping our staging directory.
fn contents(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if e.file_type().is_file() && !rel.starts_with(".cachesync.tmp") {
            out.insert(rel, blake3_hex(&std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_push_leaves_no_snapshot_and_a_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, store, state) =
        (t.path().join("src"), t.path().join("dst"), t.path().join("store"), t.path().join("state"));
    write_tree(&src, 1);
    let mirror = spawn_mirror(&store).await;

    let mut push = sync_proc("push", &state, &mirror.url, &src);
    push.wait_while_running("the mirror to be mid-push", || mirror_mid_push("self", &store, 0)).await;
    push.kill_mid_job();
    assert_eq!(resolve(&mirror.url).await, None, "a killed push left a snapshot");
    assert_eq!(snapshot_records(&store), Vec::<PathBuf>::new(), "a killed push left a snapshot record");

    sync_proc("push", &state, &mirror.url, &src).succeed().await;
    assert_eq!(resolve(&mirror.url).await.map(|s| s.generation), Some(1));
    pull_lib(&mirror.url, KEY, &dst, &state.join("cachesync")).await;
    assert_same_tree(&src, &dst);
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mirror_mid_push_keeps_its_previous_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2, store, state) =
        (t.path().join("v1"), t.path().join("v2"), t.path().join("store"), t.path().join("state"));
    write_tree(&v1, 1);
    write_tree(&v2, 2);
    let (mut mirror, url) = mirror_proc(&state, &store).await;
    sync_proc("push", &state, &url, &v1).succeed().await;

    let blobs_before = blob_count(&store);
    let mut push = sync_proc("push", &state, &url, &v2);
    let pid = mirror.pid().to_string();
    push.wait_while_running("the mirror to be mid-push of v2", || mirror_mid_push(&pid, &store, blobs_before)).await;
    assert!(push.running(), "the push of v2 finished before the mirror could be killed: {}", push.output());
    mirror.kill_mid_job();
    let status = push.exit().await;
    assert!(!status.success(), "a push whose mirror died succeeded: {}", push.output());
    let stderr = push.stderr();
    assert_eq!(stderr.lines().count(), 1, "one line saying what failed: {}", push.output());
    assert!(!stderr.contains("panicked") && !stderr.to_lowercase().contains("backtrace"), "{stderr}");

    let (_mirror, url) = mirror_proc(&state, &store).await;
    assert_eq!(resolve(&url).await.map(|s| s.generation), Some(1), "the key still names v1");
    assert_eq!(snapshot_records(&store).len(), 1, "no record for the interrupted push");
    pull_lib(&url, KEY, &t.path().join("after-kill"), &state.join("cachesync")).await;
    assert_same_tree(&v1, &t.path().join("after-kill"));

    sync_proc("push", &state, &url, &v2).succeed().await;
    assert_eq!(resolve(&url).await.map(|s| s.generation), Some(2));
    pull_lib(&url, KEY, &t.path().join("after-rerun"), &state.join("cachesync")).await;
    assert_same_tree(&v2, &t.path().join("after-rerun"));
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_pull_leaves_every_file_old_or_new_and_a_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2, dst, state) = (t.path().join("v1"), t.path().join("v2"), t.path().join("dst"), t.path().join("state"));
    write_tree(&v1, 1);
    write_tree(&v2, 2);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    push_lib(&mirror.url, "kill/old", &v1, &state.join("cachesync")).await;
    push_lib(&mirror.url, KEY, &v2, &state.join("cachesync")).await;
    pull_lib(&mirror.url, "kill/old", &dst, &state.join("cachesync")).await;
    assert_same_tree(&v1, &dst);

    let mut pull = sync_proc("pull", &state, &mirror.url, &dst);
    let staging = dst.join(".cachesync.tmp");
    // Files in flight are unnamed until placed: mid-pull is when some big files are placed and some not.
    let mid_pull = || (1..BIG_FILES as usize).contains(&big_files_placed(&dst, &v2));
    pull.wait_while_running("the pull to place a file while others are in flight", mid_pull).await;
    pull.kill_mid_job();
    let (old, new, now) = (contents(&v1), contents(&v2), contents(&dst));
    assert_eq!(now.keys().collect::<Vec<_>>(), old.keys().collect::<Vec<_>>(), "files vanished or appeared");
    for (path, hash) in &now {
        assert!(*hash == old[path] || *hash == new[path], "{path} is neither its old nor its new content");
    }

    sync_proc("pull", &state, &mirror.url, &dst).succeed().await;
    assert_same_tree(&v2, &dst);
    assert!(!staging.exists(), "the staging directory is removed");
    unlock(t.path());
}
