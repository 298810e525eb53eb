//! `ciliate bpf ...`: the datapath's maps as the agent reads them.

use ciliate_model::api::CtEntry;

use super::{Ctx, Outcome};
use crate::output::{self, duration, or_none};

/// Prints the connection-tracking table.
pub async fn ct_list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let entries = ctx.client.ct_entries().await?;
    output::print(&output::render(ctx.format, &entries, |e| ct_table(e))?)?;
    Ok(Outcome::Success)
}

/// One row per entry: PROTO, SRC, DST, DIR, EXPIRES, TX, RX (packets/bytes), FLAGS.
pub fn ct_table(entries: &[CtEntry]) -> String {
    output::table(
        &["proto", "src", "dst", "dir", "expires", "tx", "rx", "flags"],
        entries.iter().map(|e| {
            vec![
                e.proto.clone(),
                format!("{}:{}", e.src, e.sport),
                format!("{}:{}", e.dst, e.dport),
                e.direction.clone(),
                expires(e.expires_in),
                format!("{}/{}", e.tx_packets, e.tx_bytes),
                format!("{}/{}", e.rx_packets, e.rx_bytes),
                or_none(e.flags.join(",")),
            ]
        }),
    )
}

/// Time left, or how long ago it ran out: expired entries linger until the next GC, and
/// seeing that they are stale matters when debugging.
fn expires(secs: i64) -> String {
    if secs >= 0 {
        duration(secs.unsigned_abs())
    } else {
        format!("expired-{}-ago", duration(secs.unsigned_abs()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::ct_entry;
    use crate::output::{render, Format};

    #[test]
    fn ct_has_the_columns_and_values() {
        let mut stale = ct_entry();
        stale.proto = "udp".into();
        stale.expires_in = -5;
        stale.flags = vec![];
        let text = ct_table(&[ct_entry(), stale]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["PROTO", "SRC", "DST", "DIR", "EXPIRES", "TX", "RX", "FLAGS"]
        );
        assert_eq!(
            rows[1],
            [
                "tcp",
                "10.0.0.5:40000",
                "10.0.0.9:80",
                "egress",
                "5h59m",
                "10/1200",
                "8/9000",
                "SYN,ACK"
            ]
        );
        assert_eq!(rows[2][0], "udp");
        assert_eq!(rows[2][4], "expired-5s-ago");
        assert_eq!(rows[2][7], "<none>");
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let entries = vec![ct_entry()];
        let json = render(Format::Json, &entries, |e| ct_table(e)).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<CtEntry>>(&json).unwrap(),
            entries
        );
        let yaml = render(Format::Yaml, &entries, |e| ct_table(e)).unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<Vec<CtEntry>>(&yaml).unwrap(),
            entries
        );
    }
}
