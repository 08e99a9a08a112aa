//! Using cachesync as a library: start a mirror in-process, push a directory,
//! pull it elsewhere.
//!
//! `cargo run --example push_pull -- SOURCE_DIR`

use std::path::PathBuf;
use std::time::Duration;

use cachesync::config::{MirrorSettings, TransferSettings};
use cachesync::mirror::Mirror;
use cachesync::profile::Profile;
use cachesync::rpc::client::Client;
use cachesync::sync::{self, PullRequest, PushRequest, SyncOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let source = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "src".into()));
    let work = tempfile::tempdir()?;
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: work.path().join("store").to_string_lossy().into(),
        ..MirrorSettings::default()
    };
    let mirror = Mirror::bind(&settings, &TransferSettings::default()).await?;
    let url = format!("http://{}", mirror.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(mirror.run(shutdown.clone()));

    let opts = SyncOptions {
        delta_min_size: 128 << 10,
        compression_level: 3,
        fsync: false,
        state_dir: work.path().join("state"),
        progress: true,
        connect_timeout: Duration::from_secs(5),
        streams: 4,
        fuzzy: sync::When::Remote,
        unpack: sync::When::Remote,
    };
    let mut client = Client::connect(&url, opts.connect_timeout).await?;
    let pushed = sync::push(
        &mut client,
        &PushRequest { root: source, key: "example/main".into(), profile: Profile::Generic },
        &opts,
    )
    .await?;
    println!("pushed {} files, {} bytes on the wire", pushed.files, pushed.bytes_sent);
    let restore = PullRequest {
        root: work.path().join("restored"),
        key: "example/main".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    let pulled = sync::pull(&mut client, &restore, &opts).await?;
    println!("pulled {} files, {} bytes on the wire", pulled.files, pulled.bytes_received);

    shutdown.cancel();
    server.await??;
    Ok(())
}
