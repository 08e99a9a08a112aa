//! TLS: a CA and certificates made here, a real TLS mirror on 127.0.0.1,
//! and mutual TLS when the mirror asks for client certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cachesync::config::MirrorSettings;
use cachesync::profile::Profile;
use cachesync::rpc::client::{Client, ConnectOptions};
use cachesync::sync::{self, PullRequest, PushRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::helpers::*;

struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

/// A CA, a server certificate for localhost and 127.0.0.1, a client certificate.
fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cachesync test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let server = leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
    let client = leaf(vec!["ci-job".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    Pki { ca: dir.join("ca.pem"), server, client }
}

async fn tls_mirror(t: &Path, pki: &Pki, mutual: bool) -> (TestMirror, String) {
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: t.join("store").to_string_lossy().into(),
        tls_cert: pki.server.0.to_string_lossy().into(),
        tls_key: pki.server.1.to_string_lossy().into(),
        tls_client_ca: if mutual { pki.ca.to_string_lossy().into() } else { String::new() },
        ..MirrorSettings::default()
    };
    let mirror = spawn_mirror_with(settings).await;
    let url = mirror.url.replace("http://", "https://");
    (mirror, url)
}

fn opts(ca: Option<&Path>, identity: Option<&(PathBuf, PathBuf)>) -> ConnectOptions {
    ConnectOptions {
        ca_file: ca.map(Path::to_path_buf),
        identity: identity.cloned(),
        ..ConnectOptions::new(Duration::from_secs(5))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_over_tls_with_a_private_ca() {
    let t = tempfile::tempdir().unwrap();
    let pki = pki(t.path());
    let (_mirror, url) = tls_mirror(t.path(), &pki, false).await;
    let src = t.path().join("src");
    write(&src, "mod.zip", &random_bytes(3, 300_000));
    let mut client = Client::connect_with(&url, &opts(Some(&pki.ca), None)).await.unwrap();
    let push = PushRequest { root: src.clone(), key: "tls/k".into(), profile: Profile::Generic };
    let pushed = sync::push(&mut client, &push, &options(&t.path().join("s"))).await.unwrap();
    assert!(pushed.bytes_sent > 300_000, "counted on the socket, under TLS");
    let dst = t.path().join("dst");
    let pull = PullRequest {
        root: dst.clone(),
        key: "tls/k".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    sync::pull(&mut client, &pull, &options(&t.path().join("s2"))).await.unwrap();
    assert_same_tree(&src, &dst);

    // Without our CA the certificate is not trusted; plain HTTP gets nowhere.
    let err = Client::connect_with(&url, &opts(None, None)).await.err().expect("untrusted").to_string();
    assert!(err.contains("cannot reach the mirror") && err.to_lowercase().contains("certificate"), "{err}");
    let plain = url.replace("https://", "http://");
    assert!(Client::connect_with(&plain, &opts(None, None)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let t = tempfile::tempdir().unwrap();
    let pki = pki(t.path());
    let (_mirror, url) = tls_mirror(t.path(), &pki, true).await;
    assert!(Client::connect_with(&url, &opts(Some(&pki.ca), None)).await.is_err(), "no client certificate");
    let mut client = Client::connect_with(&url, &opts(Some(&pki.ca), Some(&pki.client))).await.unwrap();
    assert!(client.list_keys("").await.unwrap().is_empty());
}
