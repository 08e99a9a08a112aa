//! Conditional and partial requests, as pure functions: `If-None-Match`
//! against an entity tag, and one `Range` of bytes (RFC 9110, sections 13
//! and 14). A header this module cannot use is ignored, as the RFC allows:
//! the whole content is served.

use std::ops::Range;

/// What a `Range` header asks of content of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// The whole content (no header, several ranges, or one that is invalid).
    Whole,
    /// These bytes (206).
    Part(Range<u64>),
    /// A range beyond the end (416).
    Unsatisfiable,
}

/// True when an `If-None-Match` value (`*` or a list of tags, weak or
/// strong) matches `etag` (a quoted tag): the client's copy is current.
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Parses a `Range` header against content of `size` bytes: `bytes=a-b`,
/// `bytes=a-` or `bytes=-n`.
pub fn range(header: &str, size: u64) -> Wanted {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Wanted::Whole };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Wanted::Whole };
    let number = |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok());
    match (number(first), number(last)) {
        // A suffix: the last n bytes.
        (None, Some(Some(n))) if first.is_empty() => match n {
            0 => Wanted::Unsatisfiable,
            n => from(size.saturating_sub(n), size, size),
        },
        (Some(Some(a)), None) if last.is_empty() => from(a, size, size),
        (Some(Some(a)), Some(Some(b))) if a <= b => from(a, b.saturating_add(1).min(size), size),
        // A number too big for u64 as the first byte is beyond any content.
        (Some(None), _) => Wanted::Unsatisfiable,
        _ => Wanted::Whole,
    }
}

fn from(first: u64, end: u64, size: u64) -> Wanted {
    if first >= size { Wanted::Unsatisfiable } else { Wanted::Part(first..end) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_one_part() {
        assert_eq!(range("bytes=0-9", 100), Wanted::Part(0..10));
        assert_eq!(range("bytes=90-200", 100), Wanted::Part(90..100));
        assert_eq!(range("bytes=10-", 100), Wanted::Part(10..100));
        assert_eq!(range("bytes=-10", 100), Wanted::Part(90..100));
        assert_eq!(range("bytes=-1000", 100), Wanted::Part(0..100));
        assert_eq!(range("bytes=99-99", 100), Wanted::Part(99..100));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(range("bytes=100-", 100), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=99999999999999999999999-", 100), Wanted::Unsatisfiable);
    }

    #[test]
    fn headers_that_cannot_be_used_ask_for_everything() {
        for h in ["items=0-1", "bytes=5-1", "bytes=0-1,5-6", "bytes=a-b", "bytes=", "bytes=-", "bytes=1"] {
            assert_eq!(range(h, 100), Wanted::Whole, "{h}");
        }
    }

    #[test]
    fn entity_tags() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abcd\"", tag));
        assert!(!none_match("abc", tag));
    }
}
