//! `cachesync agent` processes syncing real directories: a mesh of three
//! converges and goes quiet, a peer that was down catches up, a root whose
//! directories are not watched converges through rescans, and SIGTERM in the
//! middle of a transfer leaves nothing half-written.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use cachesync::profile::Profile;
use cachesync::sync::{self, PushRequest};

use crate::helpers::*;
use crate::kill::Proc;

pub(crate) const KEY: &str = "agent/tree";
/// How long convergence may take before a test gives up (it takes seconds).
pub(crate) const CONVERGE_SECS: u64 = 20;

/// A port nothing listens on now (agents of a mesh must know each other's
/// ports before any of them starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One agent's directories and configuration.
pub(crate) struct Node {
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
}

impl Node {
    pub(crate) fn new(base: &Path, name: &str) -> Node {
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        Node { dir, port: free_port() }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes the config: peers, and extra `[agent]` lines.
    pub(crate) fn configure(&self, peers: &[&Node], extra: &str) -> PathBuf {
        let peers: Vec<String> = peers.iter().map(|p| format!("{:?}", p.url())).collect();
        let text = format!(
            "state_dir = {state:?}\n[agent]\nlisten = \"127.0.0.1:{port}\"\npeers = [{peers}]\nsettle = \"300ms\"\n{extra}\n\
             [[agent.root]]\nname = \"tree\"\npath = {root:?}\nkey = {KEY:?}\ninterval = \"500ms\"\n",
            state = self.dir.join("state"),
            port = self.port,
            peers = peers.join(", "),
            root = self.root(),
        );
        let file = self.dir.join("agent.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Starts `cachesync agent` with the written config; returns once it listens.
    pub(crate) async fn start(&self) -> Proc {
        self.start_with(&[]).await
    }

    /// [`Node::start`] with more flags after `agent`.
    pub(crate) async fn start_with(&self, flags: &[&str]) -> Proc {
        let config = self.dir.join("agent.toml");
        let mut args: Vec<&OsStr> = vec!["--config".as_ref(), config.as_ref(), "agent".as_ref()];
        args.extend(flags.iter().map(OsStr::new));
        let mut proc = Proc::start(&self.dir, &args);
        let port = format!("127.0.0.1:{}", self.port);
        let log = proc.stderr.clone();
        let listening =
            move || log.lock().unwrap().lines().any(|l| l.contains(&port) && l.contains("mirror listening"));
        proc.wait_while_running("the agent to listen", listening).await;
        proc
    }

    /// The newest generation of the key in this agent's embedded store.
    pub(crate) async fn generation(&self) -> u64 {
        connect(&self.url()).await.resolve(KEY, &[]).await.unwrap().map_or(0, |s| s.generation)
    }
}

fn proc_log_has(proc: &Proc, a: &str, b: &str) -> bool {
    proc.stderr().lines().any(|l| l.contains(a) && l.contains(b))
}

/// What must agree between agents: every entry, files with content, mode and
/// mtime; directories without their mtime (each applied snapshot sets the
/// mtimes of its directories, so concurrent writers' trees may differ there).
fn contents(root: &Path) -> Vec<String> {
    let strip = |l: String| match l.find(": dir ") {
        Some(_) => l[..l.find(" mtime").unwrap_or(l.len())].to_string(),
        None => l,
    };
    describe(root).into_iter().map(strip).collect()
}

/// True when `rel` under `root` holds exactly `data`.
pub(crate) fn holds(root: &Path, rel: &str, data: &[u8]) -> bool {
    std::fs::read(root.join(rel)).is_ok_and(|d| d == data)
}

/// Polls `cond` until it holds (true) or [`CONVERGE_SECS`] pass (false).
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CONVERGE_SECS);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

/// Waits until several cycles (500 ms each) pass without a new generation
/// in any store; returns the generations then.
async fn wait_quiet(nodes: &[Node], procs: &[Proc]) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CONVERGE_SECS);
    loop {
        let before = generations(nodes).await;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let after = generations(nodes).await;
        if before == after {
            return after;
        }
        let logs: Vec<String> = procs.iter().map(Proc::output).collect();
        assert!(std::time::Instant::now() < deadline, "the mesh kept committing:\n{}", logs.join("\n"));
    }
}

async fn generations(nodes: &[Node]) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.generation().await);
    }
    out
}

pub(crate) async fn stop(mut proc: Proc) {
    proc.signal(libc::SIGTERM);
    let status = proc.exit().await;
    assert!(status.success(), "{status}: {}", proc.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mesh_of_three_converges_then_goes_quiet() {
    let t = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(t.path(), n)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let peers: Vec<&Node> = nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p).collect();
        n.configure(&peers, "");
    }
    let mut procs = Vec::new();
    for n in &nodes {
        procs.push(n.start().await);
    }
    // One writer: a's file reaches b and c, and nobody echoes it back to a.
    let data = random_bytes(7, 300_000);
    write(&nodes[0].root(), "mod/cache/x/@v/v1.0.0.zip", &data);
    wait_for(CONVERGE_SECS, "b and c to hold a's file", || {
        nodes.iter().all(|n| holds(&n.root(), "mod/cache/x/@v/v1.0.0.zip", &data))
    })
    .await;
    assert_eq!(wait_quiet(&nodes, &procs).await, [0, 1, 1], "a's snapshot came back to it");
    // Idle, a keeps what its peers hold (its next diff base) on disk, not in memory.
    let parked = |n: &Node| {
        let bases = std::fs::read_dir(n.dir.join("state/bases")).map(|d| d.flatten().collect::<Vec<_>>());
        bases.unwrap_or_default().iter().any(|e| e.file_name().to_string_lossy().ends_with(".parked.bin"))
    };
    wait_for(CONVERGE_SECS, "a to park its peers' manifest", || parked(&nodes[0])).await;
    // With a single writer, even directory mtimes agree.
    assert_same_tree(&nodes[0].root(), &nodes[1].root());
    assert_same_tree(&nodes[0].root(), &nodes[2].root());
    // Two writers at once: everyone ends with the union, then quiet again.
    write(&nodes[2].root(), "c-only.txt", b"from c\n");
    write(&nodes[1].root(), "mod/b-only.txt", b"from b\n");
    let same = eventually(|| {
        let a = contents(&nodes[0].root());
        a.len() == 7 && nodes.iter().all(|n| contents(&n.root()) == a)
    })
    .await;
    if !same {
        let trees: Vec<String> = nodes.iter().map(|n| contents(&n.root()).join("\n")).collect();
        let logs: Vec<String> = procs.iter().map(Proc::output).collect();
        panic!("trees differ:\n{}\n{}", trees.join("\n--\n"), logs.join("\n"));
    }
    wait_quiet(&nodes, &procs).await;
    // a writes again: its push starts from the parked manifest.
    write(&nodes[0].root(), "mod/a-again.txt", b"again\n");
    wait_for(CONVERGE_SECS, "b and c to hold a's second file", || {
        nodes.iter().all(|n| holds(&n.root(), "mod/a-again.txt", b"again\n"))
    })
    .await;
    for p in procs {
        stop(p).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_was_down_catches_up() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (Node::new(t.path(), "a"), Node::new(t.path(), "b"));
    a.configure(&[&b], "");
    b.configure(&[&a], "");
    let pa = a.start().await;
    let pb = b.start().await;
    write(&a.root(), "first.txt", b"1");
    wait_for(CONVERGE_SECS, "b to get first.txt", || holds(&b.root(), "first.txt", b"1")).await;
    stop(pb).await;
    // Written while b is down: on a (a's pushes fail and back off) and on b's disk.
    for i in 0..20 {
        write(&a.root(), &format!("while-down/{i}.bin"), &random_bytes(i, 10_000));
    }
    write(&b.root(), "b-offline.txt", b"written while b was stopped");
    wait_for(CONVERGE_SECS, "a to notice b is down", || proc_log_has(&pa, "push failed", &b.url())).await;
    let pb = b.start().await;
    wait_for(CONVERGE_SECS, "both roots to hold everything", || {
        (0..20).all(|i| holds(&b.root(), &format!("while-down/{i}.bin"), &random_bytes(i, 10_000)))
            && holds(&a.root(), "b-offline.txt", b"written while b was stopped")
    })
    .await;
    wait_for(CONVERGE_SECS, "a to log the recovery", || proc_log_has(&pa, "reachable again", &b.url())).await;
    wait_for(CONVERGE_SECS, "identical trees", || describe(&a.root()) == describe(&b.root())).await;
    let warns = pa.stderr().lines().filter(|l| l.contains("WARN") && l.contains("push failed")).count();
    assert_eq!(warns, 1, "one WARN per outage: {}", pa.stderr());
    stop(pa).await;
    stop(pb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unwatched_directories_converge_through_rescans() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (Node::new(t.path(), "a"), Node::new(t.path(), "b"));
    write(&a.root(), "deep/er/old.txt", b"before start");
    // One watch: the root's; deep/ and deep/er/ are not watched.
    a.configure(&[&b], "max_watches = 1\nrescan = \"2s\"");
    b.configure(&[&a], "");
    let pa = a.start().await;
    let pb = b.start().await;
    wait_for(CONVERGE_SECS, "b to get the first tree", || holds(&b.root(), "deep/er/old.txt", b"before start")).await;
    write(&a.root(), "deep/er/new.txt", b"no event for this one");
    wait_for(CONVERGE_SECS, "the rescan to find new.txt", || {
        holds(&b.root(), "deep/er/new.txt", b"no event for this one")
    })
    .await;
    let warned = pa.stderr().lines().filter(|l| l.contains("fs.inotify.max_user_watches")).count();
    assert_eq!(warned, 1, "the watch limit is logged once: {}", pa.stderr());
    stop(pa).await;
    stop(pb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_transfer_leaves_no_partial_file_and_exits_0() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let src = t.path().join("src");
    let files: Vec<(String, Vec<u8>)> =
        (0..12).map(|i| (format!("big/{i}.bin"), random_bytes(100 + i, 16 << 20))).collect();
    for (rel, data) in &files {
        write(&src, rel, data);
    }
    let req = PushRequest { root: src.clone(), key: KEY.into(), profile: Profile::Generic };
    sync::push(&mut connect(&mirror.url).await, &req, &options(&t.path().join("push-state"))).await.unwrap();
    let node = Node::new(t.path(), "a");
    let extra = format!("use_mirror = true\n[client]\nmirror = {:?}", mirror.url);
    node.configure(&[], &extra);
    let config = std::fs::read_to_string(node.dir.join("agent.toml")).unwrap();
    std::fs::write(
        node.dir.join("agent.toml"),
        config.replace("interval = \"500ms\"", "interval = \"500ms\"\ndirection = \"pull\""),
    )
    .unwrap();
    let mut proc = node.start().await;
    let staging = node.root().join(".cachesync.tmp");
    let first_landed = || files.iter().any(|(rel, _)| node.root().join(rel).exists());
    proc.wait_while_running("the pull to be under way", first_landed).await;
    proc.signal(libc::SIGTERM);
    let status = proc.exit().await;
    assert!(status.success(), "{status}: {}", proc.output());
    assert!(!staging.exists(), "staging left behind: {}", proc.output());
    let mut complete = 0;
    for (rel, data) in &files {
        if let Ok(got) = std::fs::read(node.root().join(rel)) {
            assert!(got == *data, "{rel} is partial or wrong");
            complete += 1;
        }
    }
    assert!(complete < files.len(), "the pull had finished: nothing was interrupted");
}
