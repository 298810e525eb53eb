//! Monitor aggregation: how many trace events the datapath reports per connection, in Cilium's
//! levels and words (`--monitor-aggregation`). Drops are always reported.

use std::fmt;
use std::str::FromStr;

use crate::abi;

/// A monitor aggregation level, as Cilium's agent flag names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MonitorAggregation {
    /// `none` (`disabled`): a trace event for every packet, where it leaves an endpoint
    /// (from-endpoint) as well as where it is handed on (to-endpoint, to-stack, to-overlay,
    /// to-proxy).
    None,
    /// `lowest` / `low`: every packet, only where it is handed on.
    Low,
    /// `medium` (Cilium's default; `maximum` too): only where a packet is handed on (and
    /// from-endpoint for a packet addressed to a Service, which only that side names), and only
    /// packets that matter to its connection: the first, the first reply, a TCP flag (SYN,
    /// FIN, RST) new in its direction.
    #[default]
    Medium,
}

impl MonitorAggregation {
    /// The `NODE_F_TRACE_*` bits of `struct node_config` that select this level.
    pub fn node_flags(self) -> u32 {
        match self {
            Self::None => abi::NODE_F_TRACE_FROM | abi::NODE_F_TRACE_EVERY,
            Self::Low => abi::NODE_F_TRACE_EVERY,
            Self::Medium => 0,
        }
    }
}

impl FromStr for MonitorAggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "disabled" => Ok(Self::None),
            "lowest" | "low" => Ok(Self::Low),
            "medium" | "max" | "maximum" => Ok(Self::Medium),
            _ => Err(format!(
                "unknown monitor aggregation level {s:?}: none, lowest, low, medium or maximum"
            )),
        }
    }
}

impl fmt::Display for MonitorAggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cilium_level_names_parse_and_unknown_ones_are_refused() {
        for (text, level) in [
            ("none", MonitorAggregation::None),
            ("disabled", MonitorAggregation::None),
            ("lowest", MonitorAggregation::Low),
            ("Low", MonitorAggregation::Low),
            ("medium", MonitorAggregation::Medium),
            ("maximum", MonitorAggregation::Medium),
            ("max", MonitorAggregation::Medium),
        ] {
            assert_eq!(text.parse::<MonitorAggregation>(), Ok(level), "{text}");
        }
        let err = "loud".parse::<MonitorAggregation>().unwrap_err();
        assert!(err.contains("\"loud\"") && err.contains("medium"), "{err}");
        assert_eq!(MonitorAggregation::default(), MonitorAggregation::Medium);
    }

    #[test]
    fn only_none_reports_from_endpoint_and_medium_sets_no_bit() {
        assert_eq!(MonitorAggregation::Medium.node_flags(), 0);
        assert_eq!(
            MonitorAggregation::Low.node_flags(),
            abi::NODE_F_TRACE_EVERY
        );
        assert_ne!(
            MonitorAggregation::None.node_flags() & abi::NODE_F_TRACE_FROM,
            0
        );
    }
}
