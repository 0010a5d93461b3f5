//! The vocabulary of placement: what a caller declares ([`Weight`]), where work runs
//! ([`LaneSet`]), who decided ([`RouteSource`]) and the decision itself ([`Placement`]).
//!
//! It sits at the bottom of the crate so that the model file, the routers, the lanes and
//! the telemetry all speak it without importing one another.

use std::fmt;
use std::str::FromStr;

/// The cost a user declares for an operation when registering it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Sub-microsecond to a few microseconds: batched, spread over the light lanes.
    Light,
    /// Tens to hundreds of microseconds: small batches on the light lanes.
    Medium,
    /// Milliseconds or more: one at a time, on the heavy lanes.
    Heavy,
}

impl Weight {
    /// The cost a tag stands for when nothing better is known (ns): the prediction the
    /// tag router attaches to a token (light 5 µs, medium 50 µs, heavy 1 ms).
    pub fn nominal_ns(self) -> u64 {
        match self {
            Weight::Light => 5_000,
            Weight::Medium => 50_000,
            Weight::Heavy => 1_000_000,
        }
    }

    /// The lower-case name (`light`, `medium`, `heavy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Weight::Light => "light",
            Weight::Medium => "medium",
            Weight::Heavy => "heavy",
        }
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Weight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(Weight::Light),
            "medium" => Ok(Weight::Medium),
            "heavy" => Ok(Weight::Heavy),
            other => Err(format!("unknown weight {other:?}: expected light, medium or heavy")),
        }
    }
}

/// A set of lanes (worker threads): the light set serves short work, the heavy set
/// keeps long work away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneSet {
    /// Lanes that serve light and medium work.
    Light,
    /// Lanes reserved for heavy work.
    Heavy,
    /// Workers on other machines, reached over NATS JetStream (see
    /// [`remote`](crate::remote)). Only operations registered with
    /// [`OperationBuilder::remote`](crate::OperationBuilder::remote) go there; for any
    /// other (or with no connected worker) it means the set the router chose.
    Remote,
}

impl LaneSet {
    /// Every lane set, in [`LaneSet::index`] order.
    pub(crate) const ALL: [LaneSet; 3] = [LaneSet::Light, LaneSet::Heavy, LaneSet::Remote];

    pub(crate) fn index(self) -> usize {
        match self {
            LaneSet::Light => 0,
            LaneSet::Heavy => 1,
            LaneSet::Remote => 2,
        }
    }

    /// The lower-case name (`light`, `heavy`, `remote`).
    pub fn as_str(self) -> &'static str {
        match self {
            LaneSet::Light => "light",
            LaneSet::Heavy => "heavy",
            LaneSet::Remote => "remote",
        }
    }
}

impl fmt::Display for LaneSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LaneSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(LaneSet::Light),
            "heavy" => Ok(LaneSet::Heavy),
            "remote" => Ok(LaneSet::Remote),
            other => Err(format!("unknown lane set {other:?}: expected light, heavy or remote")),
        }
    }
}

/// Which layer of routing made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteSource {
    /// A manual override from the control port.
    Override,
    /// The learned cost model.
    Model,
    /// The weight declared at registration.
    Tag,
    /// A rule of thumb without a model (the running-average router, the benchmark
    /// oracle).
    Heuristic,
}

impl RouteSource {
    /// The lower-case name (`override`, `model`, `tag`, `heuristic`).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Override => "override",
            RouteSource::Model => "model",
            RouteSource::Tag => "tag",
            RouteSource::Heuristic => "heuristic",
        }
    }
}

/// Where and how a token runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The lane set whose queue receives it.
    pub lanes: LaneSet,
    /// Tokens per batch (≥ 1). A batch costs one queue operation.
    pub batch: u32,
    /// The predicted cost class, when a model made the decision.
    pub class: Option<u8>,
    /// The predicted runtime of the token (ns): the mean runtime of the model leaf it
    /// ends at (its class's median for models without leaf runtimes), the running
    /// average, or the tag's [`Weight::nominal_ns`]. Lanes use it to decide what to
    /// take next.
    pub predicted_ns: u64,
    /// Who decided.
    pub source: RouteSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for weight in [Weight::Light, Weight::Medium, Weight::Heavy] {
            assert_eq!(weight.as_str().parse::<Weight>(), Ok(weight));
        }
        for (index, set) in LaneSet::ALL.into_iter().enumerate() {
            assert_eq!(set.as_str().parse::<LaneSet>(), Ok(set));
            assert_eq!(set.index(), index);
        }
        assert!("huge".parse::<Weight>().unwrap_err().contains("huge"));
        assert!("elsewhere".parse::<LaneSet>().unwrap_err().contains("elsewhere"));
    }
}
