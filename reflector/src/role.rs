//! The three reflector tiers, shared by the relay binary, the control protocol and the
//! tree builder.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which tier a reflector is. Order matters: along every path from a master down to a
/// viewer the rank never decreases, and a public reflector is never a parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Fed by encoder units; the root of a subtree.
    Master,
    /// Relays between a master (or another intermediate) and public reflectors.
    Intermediate,
    /// Serves viewers (RTSP, WHEP) at the edge; always a leaf of the tree.
    Public,
}

impl Role {
    /// 0 for a master, 1 for an intermediate, 2 for a public reflector.
    pub fn rank(self) -> u8 {
        match self {
            Role::Master => 0,
            Role::Intermediate => 1,
            Role::Public => 2,
        }
    }

    /// The lowercase name used on the command line, in XML and in topology files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Intermediate => "intermediate",
            Role::Public => "public",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `master`, `intermediate`, `public`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected master, intermediate or public")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(Role::Master),
            "intermediate" => Ok(Role::Intermediate),
            "public" => Ok(Role::Public),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rank_orders_tiers() {
        for r in [Role::Master, Role::Intermediate, Role::Public] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!(Role::Master.rank() < Role::Intermediate.rank());
        assert!(Role::Intermediate.rank() < Role::Public.rank());
        assert!("edge".parse::<Role>().is_err());
    }
}
