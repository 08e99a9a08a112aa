//! Who may do what on a mirror: tokens, roles and key scopes.
//!
//! The mirror reads a tokens file (TOML, one `[[token]]` table each with a
//! `name`, a `secret`, a `role` of `read` or `read-write`, and for writers the
//! key prefixes they may write). A request presents `authorization: Bearer
//! SECRET`; it is compared in constant time with every token (no early exit),
//! and secrets are never logged or printed. Without a tokens file the mirror
//! is open: anyone who reaches it may read and write (it says so at start).
//! The file can be reloaded while the mirror runs ([`Auth::reload`], on SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::hash::Hash;

/// Why a tokens file or a request was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The tokens file cannot be used.
    #[error("tokens file {path}: {why}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// No token, or one the mirror does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token asking for more than it may.
    #[error("{0}")]
    Forbidden(String),
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Pull and look, never push.
    Read,
    /// Also push blobs and commit snapshots under its key prefixes.
    ReadWrite,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    secret: String,
    role: Role,
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// The caller of a request, as the mirror established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name (`anonymous` on an open mirror).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Key prefixes it may write.
    pub keys: Vec<String>,
}

impl Identity {
    /// Everyone, on a mirror without a tokens file.
    pub fn anonymous() -> Identity {
        Identity { name: "anonymous".into(), role: Role::ReadWrite, keys: vec![String::new()] }
    }

    /// Checks that this caller may upload at all.
    ///
    /// # Errors
    ///
    /// [`AuthError::Forbidden`] for a read-only token.
    pub fn check_upload(&self) -> Result<(), AuthError> {
        match self.role {
            Role::ReadWrite => Ok(()),
            Role::Read => Err(AuthError::Forbidden(format!("token {:?} is read-only: it may not push", self.name))),
        }
    }

    /// Checks that this caller may commit a snapshot under `key`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Forbidden`] naming the token, the key and its scope.
    pub fn check_write(&self, key: &str) -> Result<(), AuthError> {
        self.check_upload()?;
        if self.keys.iter().any(|prefix| key.starts_with(prefix.as_str())) {
            return Ok(());
        }
        Err(AuthError::Forbidden(format!(
            "token {:?} may not write key {key:?} (it may write keys starting with: {})",
            self.name,
            self.keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
        )))
    }
}

struct Token {
    identity: Identity,
    secret: Hash,
}

/// The mirror's tokens; cheap to clone, shared with the reload task.
#[derive(Clone)]
pub struct Auth {
    path: Option<PathBuf>,
    tokens: Arc<RwLock<Vec<Token>>>,
}

/// Compares two digests without an early exit.
fn same(a: &Hash, b: &Hash) -> bool {
    a.as_bytes().iter().zip(b.as_bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse(path: &Path) -> Result<Vec<Token>, AuthError> {
    let bad = |why: String| AuthError::BadFile { path: path.display().to_string(), why };
    let file: TokensFile = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| bad(e.to_string()))?;
    let mut tokens: Vec<Token> = Vec::new();
    for t in file.token {
        if t.secret.len() < 16 {
            return Err(bad(format!("token {:?}: a secret needs at least 16 characters", t.name)));
        }
        if tokens.iter().any(|o| o.identity.name == t.name) {
            return Err(bad(format!("token {:?} appears twice", t.name)));
        }
        for k in &t.keys {
            crate::store::check_prefix(k).map_err(|e| bad(format!("token {:?}: {e}", t.name)))?;
        }
        let identity = Identity { name: t.name, role: t.role, keys: t.keys };
        tokens.push(Token { identity, secret: Hash::of(t.secret.as_bytes()) });
    }
    Ok(tokens)
}

impl Auth {
    /// An open mirror: everyone is [`Identity::anonymous`].
    pub fn open() -> Auth {
        Auth { path: None, tokens: Arc::default() }
    }

    /// Loads a tokens file.
    ///
    /// # Errors
    ///
    /// [`AuthError::BadFile`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let tokens = parse(path)?;
        Ok(Auth { path: Some(path.to_path_buf()), tokens: Arc::new(RwLock::new(tokens)) })
    }

    /// True when requests need a token.
    pub fn is_enforced(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the tokens file again; on error the tokens in force stay.
    ///
    /// # Errors
    ///
    /// [`AuthError::BadFile`].
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Some(path) = &self.path else { return Ok(0) };
        let tokens = parse(path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
        Ok(n)
    }

    /// Who presents `authorization` (the header's value, if any).
    ///
    /// # Errors
    ///
    /// [`AuthError::Unauthenticated`] for a missing, malformed or unknown token.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        if !self.is_enforced() {
            return Ok(Identity::anonymous());
        }
        let Some(secret) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(AuthError::Unauthenticated(
                "this mirror needs a token (set CACHESYNC_CLIENT__TOKEN or client.token_file)".into(),
            ));
        };
        let presented = Hash::of(secret.trim().as_bytes());
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for t in tokens.iter() {
            if same(&t.secret, &presented) {
                found = Some(t.identity.clone());
            }
        }
        found.ok_or_else(|| AuthError::Unauthenticated("the mirror does not know this token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens_file(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("tokens.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    const FILE: &str = r#"
[[token]]
name = "fork-prs"
secret = "read-only-secret-0123456789"
role = "read"

[[token]]
name = "main"
secret = "main-branch-secret-0123456789"
role = "read-write"
keys = ["gomod/linux-amd64/main", "gobuild/"]
"#;

    #[test]
    fn tokens_identify_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(&tokens_file(dir.path(), FILE)).unwrap();
        let main = auth.identify(Some("Bearer main-branch-secret-0123456789")).unwrap();
        assert_eq!(main.name, "main");
        assert!(main.check_write("gomod/linux-amd64/main").is_ok());
        assert!(main.check_write("gobuild/x").is_ok());
        let err = main.check_write("gomod/linux-amd64/release").unwrap_err().to_string();
        assert!(err.contains("may not write key \"gomod/linux-amd64/release\""), "{err}");
        let fork = auth.identify(Some("Bearer read-only-secret-0123456789")).unwrap();
        assert!(fork.check_upload().unwrap_err().to_string().contains("read-only"));
        assert!(matches!(auth.identify(None), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.identify(Some("Bearer nope")), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.identify(Some("main-branch-secret-0123456789")), Err(AuthError::Unauthenticated(_))));
        assert_eq!(Auth::open().identify(None).unwrap(), Identity::anonymous());
    }

    #[test]
    fn bad_files_are_refused_and_reload_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_file(dir.path(), FILE);
        let auth = Auth::load(&path).unwrap();
        for body in [
            "[[token]]\nname = \"x\"\nsecret = \"short\"\nrole = \"read\"\n",
            "[[token]]\nname = \"x\"\nsecret = \"long-enough-secret-123\"\nrole = \"admin\"\n",
            "[[token]]\nname = \"x\"\nsecret = \"long-enough-secret-123\"\nrole = \"read\"\ncolour = 1\n",
        ] {
            std::fs::write(&path, body).unwrap();
            let err = auth.reload().unwrap_err();
            assert!(err.to_string().contains("tokens.toml"), "{err}");
            assert!(auth.identify(Some("Bearer main-branch-secret-0123456789")).is_ok(), "old tokens stay");
        }
        std::fs::write(&path, "[[token]]\nname = \"new\"\nsecret = \"a-brand-new-secret-42\"\nrole = \"read\"\n")
            .unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.identify(Some("Bearer main-branch-secret-0123456789")).is_err());
        assert_eq!(auth.identify(Some("Bearer a-brand-new-secret-42")).unwrap().name, "new");
    }
}
