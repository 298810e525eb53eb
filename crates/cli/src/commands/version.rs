//! `ciliate version`.

use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome};
use crate::output::{self, fields};

/// What `ciliate version` prints (also as `-o json|yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// This binary.
    pub client: ClientVersion,
    /// The agent, when asked and reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentVersion>,
}

/// The client's version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientVersion {
    /// The crate version this binary was built from.
    pub version: String,
}

/// The agent's version, as its status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVersion {
    /// The agent's version.
    pub version: String,
    /// The node it runs on.
    pub node: String,
}

/// Prints the versions. An unreachable agent still gets the client's version printed, then
/// fails (exit 1) as `kubectl version` does, unless only the client's was asked for.
pub async fn run(ctx: &Ctx, client_only: bool) -> anyhow::Result<Outcome> {
    let mut versions = Versions {
        client: ClientVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        agent: None,
    };
    let agent = if client_only {
        Ok(None)
    } else {
        ctx.client.status().await.map(|s| {
            Some(AgentVersion {
                version: s.version,
                node: s.node,
            })
        })
    };
    let (agent, result) = match agent {
        Ok(agent) => (agent, Ok(Outcome::Success)),
        Err(e) => (None, Err(e.into())),
    };
    versions.agent = agent;
    output::print(&output::render(ctx.format, &versions, table)?)?;
    result
}

/// `Client: x` and, when known, `Agent: y (node n)`.
pub fn table(v: &Versions) -> String {
    let mut rows = vec![("Client", v.client.version.clone())];
    if let Some(agent) = &v.agent {
        rows.push(("Agent", format!("{} (node {})", agent.version, agent.node)));
    }
    fields(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::output::{render, Format};

    fn versions() -> Versions {
        Versions {
            client: ClientVersion {
                version: "0.1.0".into(),
            },
            agent: Some(AgentVersion {
                version: "0.2.0".into(),
                node: "node-1".into(),
            }),
        }
    }

    #[test]
    fn table_shows_both() {
        assert_eq!(
            table(&versions()),
            "Client:   0.1.0\nAgent:    0.2.0 (node node-1)\n"
        );
        let client_only = Versions {
            agent: None,
            ..versions()
        };
        assert_eq!(table(&client_only), "Client:   0.1.0\n");
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let json = render(Format::Json, &versions(), table).unwrap();
        assert_eq!(serde_json::from_str::<Versions>(&json).unwrap(), versions());
        let yaml = render(Format::Yaml, &versions(), table).unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<Versions>(&yaml).unwrap(),
            versions()
        );
    }
}
