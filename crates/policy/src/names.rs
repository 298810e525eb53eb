//! Syntax checks for names Kubernetes constrains: label keys and values, object names,
//! port names. Each returns why a string is not valid, in words a user can act on.

/// A DNS-1123 subdomain (object names, label key prefixes): at most 253 characters of
/// lowercase letters, digits, '-' and '.', starting and ending with a letter or digit.
pub(crate) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    let ok = s
        .split('.')
        .all(|part| !part.is_empty() && dns_label_chars(part));
    if !ok {
        return Err(format!(
            "{s:?} must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn dns_label_chars(part: &str) -> bool {
    let b = part.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A namespace name: a DNS-1123 label (at most 63 characters, no '.').
pub(crate) fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || !dns_label_chars(s) {
        return Err(format!(
            "{s:?} must be 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63 letters,
/// digits, '-', '_' and '.', starting and ending with a letter or digit.
pub(crate) fn check_label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        // Cilium's own prefixes (`io.cilium.k8s.namespace.labels.<key>`) nest a whole key,
        // which may itself hold a prefix: only the characters are checked.
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'/'))
            });
        if !ok {
            return Err(format!(
                "label key {s:?}: the prefix before '/' must be a DNS subdomain such as example.com"
            ));
        }
    }
    if !name_part_ok(name) {
        return Err(format!(
            "label key {s:?}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 letters, digits, '-', '_' and '.', starting and ending
/// with a letter or digit.
pub(crate) fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || name_part_ok(s) {
        Ok(())
    } else {
        Err(format!(
            "label value {s:?} must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// An IANA service name as Kubernetes requires for named ports: 1-15 lowercase letters,
/// digits and '-', at least one letter, no '-' at either end and no "--".
pub(crate) fn check_port_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is neither a port number nor a port name (1-15 lowercase letters, digits and '-', with at least one letter)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(
            check_label_key("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name").is_ok()
        );
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("a b").is_err());
        assert!(check_label_key("/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3-x").is_ok());
        assert!(check_label_value("x-").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn names() {
        assert!(check_dns_subdomain("allow-web.v2").is_ok());
        assert!(check_dns_subdomain("Allow").is_err());
        assert!(check_dns_label("kube-system").is_ok());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("http-8080").is_ok());
        assert!(check_port_name("8080").is_err());
        assert!(check_port_name("web--x").is_err());
        assert!(check_port_name("a-very-long-port-name").is_err());
    }
}
