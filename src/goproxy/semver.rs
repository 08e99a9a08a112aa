//! Go's semantic versions (`golang.org/x/mod/semver`): parsing, ordering,
//! and telling releases, prereleases and pseudo-versions apart. Only the
//! canonical form (`vMAJOR.MINOR.PATCH[-pre][+build]`) is accepted: it is the
//! only form the module cache stores.

use std::cmp::Ordering;

/// A canonical Go semantic version.
#[derive(Debug, Clone)]
pub struct Version<'a> {
    text: &'a str,
    core: [u64; 3],
    /// The prerelease without its `-`, empty for a release.
    pre: &'a str,
}

fn number(s: &str) -> Option<u64> {
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if s.is_empty() || leading_zero || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Identifiers of a prerelease or build: non-empty `[0-9A-Za-z-]+`, numeric
/// ones (prerelease only) without leading zeros.
fn identifiers_ok(s: &str, numeric_rule: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(numeric_rule && id.bytes().all(|b| b.is_ascii_digit()) && id.len() > 1 && id.starts_with('0'))
    })
}

impl<'a> Version<'a> {
    /// Parses a canonical version; `None` for anything else.
    pub fn parse(text: &'a str) -> Option<Version<'a>> {
        let rest = text.strip_prefix('v')?;
        let (rest, build) = match rest.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (rest, None),
        };
        if build.is_some_and(|b| !identifiers_ok(b, false)) {
            return None;
        }
        let (core, pre) = rest.split_once('-').unwrap_or((rest, ""));
        if rest.contains('-') && !identifiers_ok(pre, true) {
            return None;
        }
        let mut parts = core.split('.');
        let mut nums = [0u64; 3];
        for n in &mut nums {
            *n = number(parts.next()?)?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Version { text, core: nums, pre })
    }

    /// The version as written.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// True for a prerelease (pseudo-versions are prereleases too).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// True for a pseudo-version: `vX.0.0-yyyymmddhhmmss-rev`,
    /// `vX.Y.Z-pre.0.yyyymmddhhmmss-rev` or `vX.Y.Z-0.yyyymmddhhmmss-rev`.
    pub fn is_pseudo(&self) -> bool {
        let Some((head, rev)) = self.pre.rsplit_once('-') else { return false };
        if rev.is_empty() || !rev.bytes().all(|b| b.is_ascii_alphanumeric()) || head.len() < 14 {
            return false;
        }
        let (prefix, stamp) = head.split_at(head.len() - 14);
        if !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        match prefix {
            "" => self.core[1] == 0 && self.core[2] == 0,
            p => p == "0." || p.ends_with(".0."),
        }
    }
}

fn compare_identifier(a: &str, b: &str) -> Ordering {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

impl Ord for Version<'_> {
    /// Go's order: by the numbers, then a prerelease before its release,
    /// prereleases by identifier (numeric ones numerically and before
    /// alphanumeric ones); build metadata is ignored.
    fn cmp(&self, other: &Self) -> Ordering {
        self.core.cmp(&other.core).then_with(|| match (self.pre, other.pre) {
            ("", "") => Ordering::Equal,
            ("", _) => Ordering::Greater,
            (_, "") => Ordering::Less,
            (a, b) => {
                let (mut a, mut b) = (a.split('.'), b.split('.'));
                loop {
                    match (a.next(), b.next()) {
                        (None, None) => return Ordering::Equal,
                        (None, Some(_)) => return Ordering::Less,
                        (Some(_), None) => return Ordering::Greater,
                        (Some(x), Some(y)) => match compare_identifier(x, y) {
                            Ordering::Equal => continue,
                            unequal => return unequal,
                        },
                    }
                }
            }
        })
    }
}

impl PartialEq for Version<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version<'_> {}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Go's choice for `@latest` among `versions` (canonical ones; others are
/// ignored): the highest release, else the highest prerelease that is not a
/// pseudo-version, else the highest pseudo-version.
pub fn latest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let rank = |v: &Version<'_>| match (v.is_prerelease(), v.is_pseudo()) {
        (false, _) => 2,
        (true, false) => 1,
        (true, true) => 0,
    };
    let parsed = versions.into_iter().filter_map(Version::parse);
    parsed.max_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version<'_> {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn only_canonical_versions_parse() {
        for ok in ["v0.0.0", "v1.2.3", "v1.2.3-pre.1", "v2.0.0+incompatible", "v1.0.0-0.20190101000000-abcdef123456"] {
            assert!(Version::parse(ok).is_some(), "{ok}");
        }
        for bad in
            ["1.2.3", "v1", "v1.2", "v1.2.3.4", "v01.2.3", "v1.2.3-", "v1.2.3-01", "v1.2.3-a..b", "v1.2.3+", "vx.y.z"]
        {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ordering_follows_semver() {
        let sorted = [
            "v0.9.0",
            "v1.0.0-0.20190101000000-abcdef123456",
            "v1.0.0-alpha",
            "v1.0.0-alpha.1",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta",
            "v1.0.0-beta.2",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0",
            "v1.2.0",
            "v1.10.0",
            "v2.0.0+incompatible",
        ];
        for pair in sorted.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("v1.0.0+a").cmp(&v("v1.0.0+b")), Ordering::Equal);
    }

    #[test]
    fn pseudo_versions_are_recognised() {
        for p in [
            "v0.0.0-20191109021931-daa7c04131f5",
            "v1.2.4-0.20191109021931-daa7c04131f5",
            "v1.2.3-pre.0.20191109021931-daa7c04131f5",
            "v2.0.0-20191109021931-daa7c04131f5+incompatible",
        ] {
            assert!(v(p).is_pseudo(), "{p}");
        }
        for p in ["v1.0.0", "v1.0.0-rc.1", "v1.2.0-20191109021931-daa7c04131f5", "v1.0.0-1.20191109021931-x"] {
            assert!(!v(p).is_pseudo(), "{p}");
        }
    }

    #[test]
    fn latest_prefers_releases_then_prereleases_then_pseudo_versions() {
        assert_eq!(latest(["v1.0.0", "v1.1.0-rc.1", "v0.9.0"]), Some("v1.0.0"));
        assert_eq!(latest(["v1.1.0-rc.1", "v1.1.0-rc.2", "v1.2.0-0.20200101000000-abcdef"]), Some("v1.1.0-rc.2"));
        assert_eq!(
            latest(["v0.0.0-20190101000000-aaaa", "v0.0.0-20200101000000-bbbb"]),
            Some("v0.0.0-20200101000000-bbbb")
        );
        assert_eq!(latest(["junk"]), None);
        assert_eq!(latest([]), None);
    }
}
