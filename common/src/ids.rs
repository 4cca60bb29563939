//! Identifiers and positions: `Epoch`, `Lsn`, `Version`, `NodeId`, `DataId`, `BootId`.
//!
//! These are newtypes so that an epoch can never be passed where an LSN is expected. Their
//! textual forms are part of the public contract (headers, JSON, file names).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A leadership term. Grows at every leadership change and never goes back (DESIGN.md §3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// Position of a record in the log: dense, starting at 1; `Lsn(0)` means "before the first record".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The version of a key: the (epoch, LSN) of its last write. Unique across truncation because a
/// truncated LSN is rewritten only in a higher epoch. Text form: `"{epoch}.{lsn}"`; the special
/// `If-Match: 0` means "the key must not exist".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch.0, self.lsn.0)
    }
}

/// Why a version string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("version {0:?} is not of the form EPOCH.LSN (for example 3.1042) or 0")]
pub struct BadVersion(pub String);

/// A condition from `If-Match`: either "absent" (`0`) or an exact version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Version(Version),
}

impl FromStr for Expect {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_matches('"');
        if t == "0" {
            return Ok(Expect::Absent);
        }
        let bad = || BadVersion(s.to_string());
        let (e, l) = t.split_once('.').ok_or_else(bad)?;
        let epoch = e.parse::<u64>().map_err(|_| bad())?;
        let lsn = l.parse::<u64>().map_err(|_| bad())?;
        if lsn == 0 {
            return Err(bad());
        }
        Ok(Expect::Version(Version {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
        }))
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<Expect>() {
            Ok(Expect::Version(v)) => Ok(v),
            _ => Err(serde::de::Error::custom(BadVersion(s))),
        }
    }
}

/// A member's configured identity (`r1`, `r2`, …). Non-empty, short, `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// Checks the id's shape; returns a reason a person can act on.
    pub fn validate(s: &str) -> Result<(), String> {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1 to 64 characters".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{s:?} may contain only letters, digits, '-' and '_'"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! random_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        /// The default (0) stands for "not known".
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u128);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(rand::random::<u128>())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                if s.len() != 32 {
                    return Err(format!("{s:?} is not 32 hex digits"));
                }
                u128::from_str_radix(s, 16)
                    .map($name)
                    .map_err(|_| format!("{s:?} is not 32 hex digits"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

random_id!(
    DataId,
    "Random id created with a replica's data directory and stored in it; a wiped disk gets a new one."
);
random_id!(
    BootId,
    "Random id of one process run of a replica; new at every start."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_parses_zero_and_versions_and_rejects_junk() {
        assert_eq!("0".parse::<Expect>(), Ok(Expect::Absent));
        assert_eq!(
            "3.1042".parse::<Expect>(),
            Ok(Expect::Version(Version {
                epoch: Epoch(3),
                lsn: Lsn(1042)
            }))
        );
        assert_eq!(
            "\"2.7\"".parse::<Expect>(),
            Ok(Expect::Version(Version {
                epoch: Epoch(2),
                lsn: Lsn(7)
            }))
        );
        for bad in ["", "3", "3.", ".4", "a.b", "3.0", "-1.2", "1.2.3"] {
            assert!(bad.parse::<Expect>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn random_ids_round_trip_through_text() {
        let d = DataId::random();
        assert_eq!(d.to_string().parse::<DataId>(), Ok(d));
        assert!("xyz".parse::<DataId>().is_err());
    }

    #[test]
    fn node_id_shape_is_checked() {
        assert!(NodeId::validate("r1").is_ok());
        assert!(NodeId::validate("").is_err());
        assert!(NodeId::validate("r 1").is_err());
    }
}
