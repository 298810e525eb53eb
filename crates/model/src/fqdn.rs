//! DNS names and Cilium's FQDN selectors (`toFQDNs`, `rules.dns`): validation and matching,
//! shared by the policy compiler, the agent's FQDN cache and the proxy's DNS rules.
//!
//! Names are compared lower-case with the trailing dot (`api.example.com.`), as Cilium stores
//! them. `matchName` is one exact name. `matchPattern` is a name where `*` stands for zero or
//! more characters of one label (`[-a-z0-9_]*`: it never matches a dot), except that `*`
//! alone matches every name (the root `.` included), as Cilium's matchpattern package has it.

use thiserror::Error;

/// Why a name or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FqdnError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// A character DNS names (or patterns) cannot hold.
    #[error("{0:?} is not allowed (only letters, digits, '-', '_', '.'{1})")]
    BadChar(char, &'static str),
    /// Two dots in a row, or a leading dot.
    #[error("has an empty label")]
    EmptyLabel,
    /// `**`, which Cilium does not define.
    #[error("'**' is not a valid wildcard (use '*' within one label)")]
    DoubleStar,
    /// Over 253 characters, or a label over 63.
    #[error("is too long")]
    TooLong,
}

/// Lower-cases `name` and gives it the trailing dot.
pub fn normalize(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

fn check(text: &str, pattern: bool) -> Result<String, FqdnError> {
    if text.is_empty() {
        return Err(FqdnError::Empty);
    }
    let extra = if pattern { ", '*'" } else { "" };
    if let Some(c) = text.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (pattern && *c == '*'))
    }) {
        return Err(FqdnError::BadChar(c, extra));
    }
    if pattern && text.contains("**") {
        return Err(FqdnError::DoubleStar);
    }
    let n = normalize(text);
    if pattern && n == "*." {
        return Ok(n);
    }
    if n.len() > 254 {
        return Err(FqdnError::TooLong);
    }
    let labels: Vec<&str> = n[..n.len() - 1].split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(FqdnError::EmptyLabel);
    }
    if labels.iter().any(|l| l.len() > 63) {
        return Err(FqdnError::TooLong);
    }
    Ok(n)
}

/// Validates a `matchName` and returns it normalized.
pub fn validate_name(name: &str) -> Result<String, FqdnError> {
    check(name, false)
}

/// Validates a `matchPattern` and returns it normalized.
pub fn validate_pattern(pattern: &str) -> Result<String, FqdnError> {
    check(pattern, true)
}

/// A compiled `matchName` or `matchPattern`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FqdnMatcher {
    /// One exact name (normalized).
    Name(String),
    /// A pattern (normalized); `*.` alone matches every name.
    Pattern(String),
}

impl FqdnMatcher {
    /// From a selector's two fields: exactly one must be given.
    pub fn new(match_name: Option<&str>, match_pattern: Option<&str>) -> Result<Self, String> {
        match (match_name, match_pattern) {
            (Some(n), None) => validate_name(n)
                .map(Self::Name)
                .map_err(|e| format!("matchName {n:?} {e}")),
            (None, Some(p)) => validate_pattern(p)
                .map(Self::Pattern)
                .map_err(|e| format!("matchPattern {p:?} {e}")),
            (Some(_), Some(_)) => Err("give matchName or matchPattern, not both".to_owned()),
            (None, None) => Err("needs matchName or matchPattern".to_owned()),
        }
    }

    /// Whether the normalized `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Pattern(p) if p == "*." => true,
            Self::Pattern(p) => glob(p.as_bytes(), name.as_bytes()),
        }
    }
}

/// `*` matches any run of bytes without a dot.
fn glob(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => {
            let label_end = n.iter().position(|&c| c == b'.').unwrap_or(n.len());
            (0..=label_end).any(|i| glob(rest, &n[i..]))
        }
        Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(p: &str) -> FqdnMatcher {
        FqdnMatcher::new(None, Some(p)).unwrap()
    }

    #[test]
    fn cilium_examples() {
        let cases = [
            ("*", "anything.example.com.", true),
            ("*", ".", true),
            ("*.cilium.io", "sub.cilium.io.", true),
            ("*.cilium.io", "cilium.io.", false),
            ("*.cilium.io", "a.b.cilium.io.", false),
            ("*cilium.io", "cilium.io.", true),
            ("*cilium.io", "sub.cilium.io.", false),
            ("sub*.cilium.io", "sub-1.cilium.io.", true),
            ("api.*.example.com", "api.eu.example.com.", true),
            ("API.Example.com", "api.example.com.", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(pat(p).matches(n), want, "{p} vs {n}");
        }
        let name = FqdnMatcher::new(Some("Api.Example.COM."), None).unwrap();
        assert!(name.matches("api.example.com."));
        assert!(!name.matches("x.api.example.com."));
    }

    #[test]
    fn bad_input_is_refused() {
        for p in ["", "**", "**.example.com", "a..b", ".a", "a b", "é.com"] {
            assert!(FqdnMatcher::new(None, Some(p)).is_err(), "{p:?}");
        }
        for n in ["", "*.a", "a..b", "a/b"] {
            assert!(FqdnMatcher::new(Some(n), None).is_err(), "{n:?}");
        }
        assert!(FqdnMatcher::new(Some("a"), Some("b")).is_err());
        assert!(FqdnMatcher::new(None, None).is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    proptest! {
        #[test]
        fn a_star_label_matches_exactly_one_label(label in "[a-z0-9_-]{0,20}", tail in "[a-z]{1,8}") {
            let name = format!("{label}.{tail}.");
            let p = pat(&format!("*.{tail}"));
            prop_assert!(p.matches(&name));
            let deeper = format!("x.{name}");
            prop_assert!(!p.matches(&deeper));
        }

        #[test]
        fn a_name_matches_itself_as_a_pattern(name in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}") {
            prop_assert!(pat(&name).matches(&normalize(&name)));
        }
    }
}
