//! Verdicts with reasons: why a flow is allowed or denied, and by which rule.

use std::fmt;

use ciliate_model::identity::NumericIdentity;
use ciliate_model::policy::{Direction, PolicyRef, RuleRef};
use serde::{Deserialize, Serialize};

/// Hubble's drop reason for a packet no rule allows under default deny.
pub const DROP_POLICY_DEFAULT_DENY: u8 = 133;
/// Hubble's drop reason for a packet an explicit deny rule matches.
pub const DROP_POLICY_DENY: u8 = 181;

/// Why one direction decided as it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No policy has rules for the endpoint in this direction: everything is allowed.
    NoPolicy,
    /// Policies have rules for the endpoint here, but none enables default deny
    /// (`enableDefaultDeny: false`), and no deny rule matched.
    NoDefaultDeny {
        /// The policies.
        policies: Vec<PolicyRef>,
    },
    /// Allow rules matched (and no deny rule did).
    AllowedBy {
        /// Every matching allow rule, in policy order.
        rules: Vec<RuleRef>,
    },
    /// The node may always reach its own endpoints.
    AllowLocalhost,
    /// Deny rules matched: they win over any allow.
    DeniedBy {
        /// Every matching deny rule.
        rules: Vec<RuleRef>,
    },
    /// Under default deny, and no rule allows the flow.
    DefaultDeny {
        /// The policies that put the endpoint in default deny in this direction.
        policies: Vec<PolicyRef>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |v: &[PolicyRef]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rules = |v: &[RuleRef]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self {
            Self::NoPolicy => f.write_str("no policy selects the endpoint (allow all)"),
            Self::NoDefaultDeny { policies } => write!(
                f,
                "no rule matches and default deny is disabled by {}",
                names(policies)
            ),
            Self::AllowedBy { rules: r } => write!(f, "allowed by {}", rules(r)),
            Self::AllowLocalhost => f.write_str("the local node may always reach its endpoints"),
            Self::DeniedBy { rules: r } => write!(f, "denied by {}", rules(r)),
            Self::DefaultDeny { policies } => write!(
                f,
                "default deny (from {}): no rule allows it",
                names(policies)
            ),
        }
    }
}

/// The verdict of one direction: the egress policy of the source, or the ingress policy of
/// the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionVerdict {
    /// The endpoint identity whose policy decided.
    pub endpoint: NumericIdentity,
    /// Its direction.
    pub direction: Direction,
    /// The other side.
    pub peer: NumericIdentity,
    /// Whether the flow passes this side.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
}

impl DirectionVerdict {
    /// Hubble's drop reason when denied: 181 for a deny rule, 133 for default deny.
    pub fn drop_reason(&self) -> Option<u8> {
        match self.reason {
            Reason::DeniedBy { .. } => Some(DROP_POLICY_DENY),
            Reason::DefaultDeny { .. } => Some(DROP_POLICY_DEFAULT_DENY),
            _ => None,
        }
    }
}

impl fmt::Display for DirectionVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of identity {} ({} identity {}): {}: {}",
            self.direction,
            self.endpoint,
            match self.direction {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            },
            self.peer,
            if self.allowed { "allowed" } else { "denied" },
            self.reason
        )
    }
}

/// The verdict on a flow from `src` to `dst`: it must pass the source's egress policy and the
/// destination's ingress policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the flow passes both.
    pub allowed: bool,
    /// The source's egress verdict, when the source is an endpoint.
    pub egress: Option<DirectionVerdict>,
    /// The destination's ingress verdict, when the destination is an endpoint.
    pub ingress: Option<DirectionVerdict>,
}

impl Verdict {
    /// The side that decided: the first that denies (egress comes first, as the packet
    /// meets it first), else ingress, else egress.
    pub fn deciding(&self) -> Option<&DirectionVerdict> {
        [self.egress.as_ref(), self.ingress.as_ref()]
            .into_iter()
            .flatten()
            .find(|v| !v.allowed)
            .or(self.ingress.as_ref())
            .or(self.egress.as_ref())
    }

    /// Hubble's drop reason of the deciding side, when denied.
    pub fn drop_reason(&self) -> Option<u8> {
        self.deciding().and_then(DirectionVerdict::drop_reason)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "ALLOWED" } else { "DENIED" })?;
        for v in [&self.egress, &self.ingress].into_iter().flatten() {
            write!(f, "\n  {v}")?;
        }
        if self.egress.is_none() && self.ingress.is_none() {
            f.write_str("\n  neither side is an endpoint: no policy applies")?;
        }
        Ok(())
    }
}
