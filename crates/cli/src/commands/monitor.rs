//! `ciliate monitor`: datapath events as they happen.

use anyhow::anyhow;
use ciliate_model::monitor::MonitorEvent;
use futures::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

use super::{Ctx, Hinted, Outcome};
use crate::cli::EventType;
use crate::output::{self, Format};

/// Prints events until Ctrl-C or SIGTERM (exit 0). The agent ending the stream is a failure: it only
/// does so when it stops, which the user watching events wants to know.
pub async fn run(
    ctx: &Ctx,
    kind: Option<EventType>,
    related_to: &[u16],
) -> anyhow::Result<Outcome> {
    // Registered before anything else, not lazily on first poll as `tokio::signal::ctrl_c`
    // would: a Ctrl-C that lands between two events must end us cleanly, never by the
    // default action (killed by a signal, no exit code).
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle Ctrl-C: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
    let events = ctx.client.monitor(kind.map(EventType::as_str)).await?;
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => return Ok(Outcome::Success),
            _ = terminate.recv() => return Ok(Outcome::Success),
            item = events.next() => match item {
                Some(event) => {
                    let event = event?;
                    if related(&event, related_to) {
                        output::print(&line(ctx.format, &event)?)?;
                    }
                }
                None => {
                    return Err(Hinted {
                        error: anyhow!("the agent closed the event stream"),
                        hint: "the agent may have stopped or restarted; `ciliate status` tells".into(),
                    }
                    .into())
                }
            },
        }
    }
}

/// Whether `event` is one `--related-to` asks for: reported by one of those endpoints (all
/// events when none is named).
pub fn related(event: &MonitorEvent, endpoints: &[u16]) -> bool {
    endpoints.is_empty() || endpoints.contains(&event.endpoint)
}

/// One event as printed: the model's one-line form, a JSON object per line (NDJSON), or a
/// YAML document.
pub fn line(format: Format, event: &MonitorEvent) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table | Format::Compact | Format::Dict => format!("{event}\n"),
        Format::Json | Format::Jsonpb => {
            let mut s = serde_json::to_string(event)?;
            s.push('\n');
            s
        }
        Format::Yaml => format!("---\n{}", serde_yaml_ng::to_string(event)?),
        Format::Jsonpath(t) => output::jsonpath(t, event)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ciliate_model::monitor::{EventKind, L4};

    fn event() -> MonitorEvent {
        MonitorEvent {
            kind: EventKind::Drop,
            time: "2024-05-01T10:00:00Z".into(),
            code: 133,
            reason: "Policy denied".into(),
            endpoint: 1234,
            ifindex: 17,
            src_identity: 2,
            dst_identity: 256,
            ct_state: "new".into(),
            len: 60,
            ethertype: 0x0800,
            src: Some("1.2.3.4".parse().unwrap()),
            dst: Some("10.0.0.5".parse().unwrap()),
            l4: Some(L4::Tcp {
                sport: 5555,
                dport: 80,
                flags: vec!["SYN".into()],
            }),
            rev_nat: 0,
            rule: 0,
            ethernet: None,
        }
    }

    #[test]
    fn table_is_one_line_per_event() {
        let text = line(Format::Table, &event()).unwrap();
        assert_eq!(text, format!("{}\n", event()));
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("1.2.3.4:5555 -> 10.0.0.5:80"), "{text}");
    }

    #[test]
    fn json_is_one_object_per_line_and_yaml_a_document() {
        let json = line(Format::Json, &event()).unwrap();
        assert_eq!(json.lines().count(), 1);
        assert_eq!(
            serde_json::from_str::<MonitorEvent>(&json).unwrap(),
            event()
        );
        let yaml = line(Format::Yaml, &event()).unwrap();
        let doc = yaml.strip_prefix("---\n").unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<MonitorEvent>(doc).unwrap(),
            event()
        );
    }
}
