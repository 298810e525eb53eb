//! Problems found while checking a policy, each tied to a field path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with one field of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The field, e.g. `spec.ingress[0].toPorts[1].ports[0].endPort`; empty for the whole policy.
    pub path: String,
    /// What is wrong, or (for a warning) what Ciliate does about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Errors (the policy is rejected) and warnings (it is accepted; something is not enforced
/// as written, and the warning says what happens instead).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problems {
    /// Errors.
    pub errors: Vec<Problem>,
    /// Warnings.
    pub warnings: Vec<Problem>,
}

impl Problems {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}
