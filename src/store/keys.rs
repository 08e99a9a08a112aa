//! Keys: names for lines of snapshots, like `gomod/linux-amd64/main`.

use super::StoreError;

const MAX_KEY: usize = 256;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Checks a key: 1 to 256 characters from `A-Z a-z 0-9 . _ - /`,
/// `/`-separated segments that are not empty, `.` or `..`.
///
/// # Errors
///
/// [`StoreError::BadKey`] saying what is wrong.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| StoreError::BadKey { key: key.to_string(), why };
    check_prefix(key)?;
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad("empty, '.' or '..' segment"));
    }
    Ok(())
}

/// Checks a restore prefix: like a key, but it may be empty or end anywhere.
///
/// # Errors
///
/// [`StoreError::BadKey`] saying what is wrong.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let bad = |why| StoreError::BadKey { key: prefix.to_string(), why };
    if prefix.len() > MAX_KEY {
        return Err(bad("longer than 256 characters"));
    }
    if !prefix.chars().all(allowed) {
        return Err(bad("allowed characters are A-Z a-z 0-9 . _ - /"));
    }
    if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
        return Err(bad("must be relative, without '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for k in ["gomod/linux-amd64/main", "a", "cargo/v1.2_x-y"] {
            assert!(check_key(k).is_ok(), "{k}");
        }
        for k in ["", "/a", "a//b", "a/../b", "a/", "a b", "a@b", "a+b", "ü", &"x".repeat(257)] {
            assert!(check_key(k).is_err(), "{k}");
        }
        assert!(check_prefix("gomod/").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("../x").is_err());
    }
}
