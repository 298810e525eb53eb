//! `ciliate config`: the agent's effective configuration, as it serialises it.

use serde_json::Value;

use super::{Ctx, Outcome};
use crate::output::{self, table};

/// Prints `GET /v1/config`.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let config = ctx.client.config().await?;
    output::print(&output::render(ctx.format, &config, config_table)?)?;
    Ok(Outcome::Success)
}

/// KEY and VALUE, one leaf per row, nested keys joined with dots (`observer.hubbleSocket`);
/// lists print as JSON, absent values as `<none>`.
pub fn config_table(config: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", config, &mut rows);
    table(&["key", "value"], rows)
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::Null => rows.push(vec![prefix.to_owned(), "<none>".to_owned()]),
        Value::String(s) => rows.push(vec![prefix.to_owned(), s.clone()]),
        other => rows.push(vec![prefix.to_owned(), other.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_are_dotted() {
        let text = config_table(&serde_json::json!({
            "nodeName": "n1", "mtu": 1500, "cluster": null,
            "observer": {"hubbleSocket": "/run/h.sock", "hubbleMetricsAddress": null},
            "nodeIps": ["10.0.0.1"]
        }));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["KEY", "VALUE"]);
        assert!(
            rows.contains(&vec!["observer.hubbleSocket", "/run/h.sock"]),
            "{text}"
        );
        assert!(
            rows.contains(&vec!["observer.hubbleMetricsAddress", "<none>"]),
            "{text}"
        );
        assert!(rows.contains(&vec!["cluster", "<none>"]), "{text}");
        assert!(rows.contains(&vec!["mtu", "1500"]), "{text}");
        assert!(rows.contains(&vec!["nodeIps", "[\"10.0.0.1\"]"]), "{text}");
    }
}
