//! The page's filters: `ciliate observe`'s filter flags as query parameters, `_` for `-`
//! (`namespace=demo`, `verdict=DROPPED`, `to_port=8080`, `not_<name>` for `--not --<name>`),
//! in the query string's order, handed to the observer's [`FilterBuilder`], the same builder
//! `ciliate observe` feeds its command line, and compiled by the observer's own filter code.
//! So the map and the table select exactly what `ciliate observe` with the same flags prints.

use ciliate_observer::filter::FlowFilters;
use ciliate_observer::filter_builder::{self, FilterBuilder, FlagError, SWITCH_FLAGS, VALUE_FLAGS};
use ciliate_observer::proto::flow::FlowFilter;

/// Parameters whose value is one pattern, selector or flag set that may hold commas itself;
/// every other parameter takes a comma-separated list (`verdict=DROPPED,ERROR` is
/// `--verdict DROPPED --verdict ERROR`).
const ONE_VALUE: [&str; 15] = [
    "label",
    "from_label",
    "to_label",
    "node_label",
    "tcp_flags",
    "fqdn",
    "from_fqdn",
    "to_fqdn",
    "http_status",
    "http_path",
    "http_url",
    "http_header",
    "dns_query",
    "cel_expression",
    "type",
];

/// A bad parameter: which, what value, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {param}={value:?}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub param: String,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(param: &str, value: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Every filter parameter the page takes, as the builder's flags with `_` for `-`
/// (`not_<name>` negates any of them).
pub fn filter_params() -> impl Iterator<Item = String> {
    VALUE_FLAGS
        .iter()
        .copied()
        .chain(SWITCH_FLAGS.iter().map(|(f, _)| *f).filter(|f| *f != "not"))
        .map(|f| f.replace('-', "_"))
}

/// The builder's flag for a parameter name, and whether it takes a value.
fn flag_of(name: &str) -> Option<(&'static str, Option<&'static str>)> {
    let flag = name.replace('_', "-");
    if let Some(f) = VALUE_FLAGS.iter().find(|f| **f == flag) {
        return Some((f, None));
    }
    SWITCH_FLAGS
        .iter()
        .find(|(f, _)| *f == flag && *f != "not")
        .map(|(f, v)| (*f, Some(*v)))
}

/// The builder's flag occurrences (`(flag, value)`, `not` before a negated one) a query
/// string asks for, in its order; parameters in `extra` are the caller's own (`limit`).
pub fn flags(
    query: &str,
    extra: &[&str],
) -> Result<Vec<(String, &'static str, String)>, QueryError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| bad("(query string)", query, e.to_string()))?;
    let mut out = Vec::new();
    for (key, value) in pairs {
        if extra.contains(&key.as_str()) {
            continue;
        }
        let (negated, name) = match key.strip_prefix("not_") {
            Some(rest) => (true, rest),
            None => (false, key.as_str()),
        };
        let Some((flag, switch)) = flag_of(name) else {
            let known: Vec<String> = filter_params().collect();
            return Err(bad(
                &key,
                &value,
                format!(
                    "unknown filter; known: {} (not_<name> negates)",
                    known.join(", ")
                ),
            ));
        };
        let values: Vec<String> = match switch {
            // A switch is on when present (`encrypted`, `encrypted=true`).
            Some(on) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "true" | "1" | "on" => vec![on.to_owned()],
                "false" | "0" | "off" => Vec::new(),
                _ => return Err(bad(&key, &value, "a switch: expected true or false")),
            },
            None if ONE_VALUE.contains(&name) => vec![value.trim().to_owned()],
            None => value.split(',').map(|v| v.trim().to_owned()).collect(),
        };
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            if negated {
                out.push((key.clone(), "not", "true".to_owned()));
            }
            out.push((key.clone(), flag, v));
        }
    }
    Ok(out)
}

/// The filters a query string asks for, compiled; also the Hubble FlowFilters themselves
/// (whitelist, blacklist) for a GetFlows request. Parameters in `extra` are the caller's
/// own (e.g. `limit`) and skipped here; any other unknown or bad parameter is refused,
/// naming it.
pub fn parse(
    query: &str,
    extra: &[&str],
) -> Result<(FlowFilters, Vec<FlowFilter>, Vec<FlowFilter>), QueryError> {
    let named = |key: &str, e: FlagError| bad(key, &e.value, e.reason);
    let mut builder = FilterBuilder::default();
    let flags = flags(query, extra)?;
    for (key, flag, value) in &flags {
        let (flag, value) = (*flag, value.as_str());
        if flag != "not" {
            // The observer's own checks (ports, regexes, protocols, selectors), per
            // parameter, so the message names the one at fault.
            filter_builder::check(flag, value).map_err(|e| named(key, e))?;
        }
        builder.set(flag, value).map_err(|e| named(key, e))?;
    }
    let (whitelist, blacklist) = builder
        .finish()
        .map_err(|e| bad("not", &e.value, e.reason))?;
    let compiled = FlowFilters::compile(&whitelist, &blacklist).map_err(|e| {
        // Fields fine alone but not together (HTTP fields with a non-L7 `type`): named by
        // the last parameter that filled the refused field.
        let culprit = filter_builder::flags_of_field(e.field);
        match flags.iter().rev().find(|(_, f, _)| culprit.contains(f)) {
            Some((key, _, value)) => bad(key, value, e.to_string()),
            None => bad("(filters)", query, e.to_string()),
        }
    })?;
    Ok((compiled, whitelist, blacklist))
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
