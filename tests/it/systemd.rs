//! The shipped systemd units pass `systemd-analyze verify` and keep their hardening.

use std::process::Command;

use crate::helpers::bin;

#[test]
fn units_verify_and_are_hardened() {
    let t = tempfile::tempdir().unwrap();
    let units = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd")).unwrap();
    let mut checked = 0;
    for unit in units {
        let path = unit.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for must in ["Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=", "User="] {
            assert!(text.contains(must), "{} lacks {must}", path.display());
        }
        // Verify against the binary we built (the unit names its installed path).
        let local = t.path().join(path.file_name().unwrap());
        std::fs::write(&local, text.replace("/usr/local/bin/cachesync", bin().to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .expect("systemd-analyze (scripts/test installs it)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "{}: {said}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "the mirror's and the agent's units");
    let agent =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/cachesync-agent.service")).unwrap();
    assert!(agent.contains("cachesync agent --config"), "the agent unit runs the agent");
}
