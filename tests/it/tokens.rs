//! Tokens: read-only jobs cannot write, writers only under their key prefixes,
//! and the tokens file reloads on SIGHUP without a restart.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cachesync::profile::Profile;
use cachesync::rpc::client::{Client, ClientError, ConnectOptions};
use cachesync::sync::{self, PushRequest};

use crate::helpers::*;

const TOKENS: &str = r#"
[[token]]
name = "fork-prs"
secret = "fork-read-only-secret-0001"
role = "read"

[[token]]
name = "main"
secret = "main-branch-secret-0002"
role = "read-write"
keys = ["gomod/linux-amd64/main"]
"#;

async fn as_token(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
    let opts = ConnectOptions { token: token.map(str::to_string), ..ConnectOptions::new(Duration::from_secs(5)) };
    Client::connect_with(url, &opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_and_out_of_scope_keys_cannot_write() {
    let t = tempfile::tempdir().unwrap();
    let tokens = t.path().join("tokens.toml");
    std::fs::write(&tokens, TOKENS).unwrap();
    let mirror = spawn_mirror_with_tokens(&t.path().join("store"), tokens.to_str().unwrap()).await;
    let src = t.path().join("src");
    write(&src, "mod.zip", &random_bytes(1, 200_000));
    let push = |key: &str| PushRequest { root: src.clone(), key: key.into(), profile: Profile::Generic };
    let opts = options(&t.path().join("state"));

    let err = as_token(&mirror.url, None).await.err().expect("no token, no entry").to_string();
    assert!(err.contains("needs a token"), "{err}");
    let err = as_token(&mirror.url, Some("guessed-secret-9999999")).await.err().unwrap().to_string();
    assert!(err.contains("does not know this token"), "{err}");

    let mut fork = as_token(&mirror.url, Some("fork-read-only-secret-0001")).await.unwrap();
    let err = sync::push(&mut fork, &push("gomod/linux-amd64/main"), &opts).await.unwrap_err().to_string();
    assert!(err.contains("\"fork-prs\" is read-only"), "{err}");
    let mut main = as_token(&mirror.url, Some("main-branch-secret-0002")).await.unwrap();
    let err = sync::push(&mut main, &push("gomod/linux-amd64/release"), &opts).await.unwrap_err().to_string();
    assert!(err.contains("may not write key \"gomod/linux-amd64/release\""), "{err}");
    assert!(fork.list_keys("").await.unwrap().is_empty(), "nothing was committed");

    let pushed = sync::push(&mut main, &push("gomod/linux-amd64/main"), &opts).await.unwrap();
    assert_eq!(pushed.generation, 1);
    let keys = fork.list_keys("").await.unwrap();
    assert_eq!(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["gomod/linux-amd64/main"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_file_and_secrets_are_never_logged() {
    let t = tempfile::tempdir().unwrap();
    let tokens = t.path().join("tokens.toml");
    std::fs::write(&tokens, TOKENS).unwrap();
    let log = std::fs::File::create(t.path().join("mirror.log")).unwrap();
    let mut mirror = Command::new(bin())
        .args(["mirror", "--listen", "127.0.0.1:0", "--store", t.path().join("store").to_str().unwrap()])
        .env("CACHESYNC_MIRROR__TOKENS_FILE", &tokens)
        .env("CACHESYNC_LOG__LEVEL", "debug")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(log)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(mirror.stderr.take().unwrap());
    let mut line = String::new();
    let mut text = String::new();
    while !line.contains("mirror listening") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "mirror exited: {text}");
        text.push_str(&line);
    }
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
    let url = format!("http://{addr}");
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let secret = "a-token-added-later-0003";
    assert!(as_token(&url, Some(secret)).await.is_err());
    std::fs::write(&tokens, format!("{TOKENS}\n[[token]]\nname = \"late\"\nsecret = \"{secret}\"\nrole = \"read\"\n"))
        .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mirror.id() as i32, libc::SIGHUP) };
    let mut accepted = false;
    for _ in 0..500 {
        if as_token(&url, Some(secret)).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted, "the new token works after SIGHUP, without a restart");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mirror.id() as i32, libc::SIGTERM) };
    assert!(mirror.wait().unwrap().success());
    let logged = text + &reader.join().unwrap();
    assert!(logged.contains("tokens file reloaded"), "{logged}");
    for s in ["fork-read-only-secret-0001", "main-branch-secret-0002", secret] {
        assert!(!logged.contains(s), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_record_their_writer_and_trusted_writers_filter_restores() {
    let t = tempfile::tempdir().unwrap();
    let tokens = t.path().join("tokens.toml");
    let both = "[[token]]\nname = \"release\"\nsecret = \"release-job-secret-0004\"\nrole = \"read-write\"\nkeys = [\"gomod/\"]\n\n\
                [[token]]\nname = \"pr\"\nsecret = \"pull-request-secret-0005\"\nrole = \"read-write\"\nkeys = [\"gomod/\"]\n";
    std::fs::write(&tokens, both).unwrap();
    let mirror = spawn_mirror_with_tokens(&t.path().join("store"), tokens.to_str().unwrap()).await;
    let key = "gomod/linux/main";
    let (release_tree, pr_tree) = (t.path().join("release"), t.path().join("pr"));
    write(&release_tree, "which", b"release");
    let mut release = as_token(&mirror.url, Some("release-job-secret-0004")).await.unwrap();
    let push = PushRequest { root: release_tree.clone(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut release, &push, &options(&t.path().join("s1"))).await.unwrap();

    // A pull-request job restores it, changes it, and writes under the same key.
    let mut pr = as_token(&mirror.url, Some("pull-request-secret-0005")).await.unwrap();
    let pull = |root: &std::path::Path, trusted: &[&str]| sync::PullRequest {
        root: root.to_path_buf(),
        key: key.into(),
        restore_prefixes: vec!["gomod/".into()],
        delete: false,
        trusted_writers: trusted.iter().map(|s| s.to_string()).collect(),
    };
    let state = t.path().join("s2");
    sync::pull(&mut pr, &pull(&pr_tree, &[]), &options(&state)).await.unwrap();
    write(&pr_tree, "which", b"pull request");
    let push = PushRequest { root: pr_tree.clone(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut pr, &push, &options(&state)).await.unwrap();

    let newest = &release.list_keys("gomod/").await.unwrap()[0];
    assert_eq!((newest.generation, newest.writer.as_str(), newest.base.as_str()), (2, "pr", "gomod/linux/main#1"));
    // A release job trusts only its own token: it gets generation 1, not the PR's 2.
    let restored = t.path().join("restored");
    let report =
        sync::pull(&mut release, &pull(&restored, &["release"]), &options(&t.path().join("s3"))).await.unwrap();
    assert_eq!(report.generation, 1);
    assert_eq!(std::fs::read(restored.join("which")).unwrap(), b"release");
    let nobody =
        sync::pull(&mut release, &pull(&t.path().join("x"), &["ci-bot"]), &options(&t.path().join("s4"))).await;
    assert!(matches!(nobody, Err(sync::SyncError::Miss(_))));
}
