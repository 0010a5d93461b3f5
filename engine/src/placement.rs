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
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(Weight::Light),
            "medium" => Ok(Weight::Medium),
            "heavy" => Ok(Weight::Heavy),
            other => Err(ParseError::new("weight", other, "light, medium or heavy")),
        }
    }
}

/// A set of lanes (worker threads): the light set serves short work, the heavy set
/// keeps long work away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
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
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(LaneSet::Light),
            "heavy" => Ok(LaneSet::Heavy),
            "remote" => Ok(LaneSet::Remote),
            other => Err(ParseError::new("lane set", other, "light, heavy or remote")),
        }
    }
}

/// How the light and heavy lane sets share the machine's cores.
///
/// The default, [`LaneSplit::Preemptive`], is preemptive priority by class: cheap work
/// gets a core back within a scheduler tick, expensive work uses every core cheap work
/// leaves idle. [`LaneSplit::Pinned`] is the older static split, kept for comparison
/// (`docs/lanes.md` has both measured side by side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LaneSplit {
    /// One light lane pinned to each core at normal priority; the heavy lanes are
    /// threads allowed onto every core of the engine at the kernel's lowest priority
    /// (`SCHED_IDLE` on Linux, nice 19 where that is refused): the kernel preempts a
    /// heavy call the moment a light lane wakes. Outside a wait (a nested call) light
    /// lanes never take heavy work and heavy lanes never take light work, except that
    /// while other threads starve the heavy lanes the light lanes take heavy work (a
    /// rescue, [`EngineStats::rescues`](crate::EngineStats::rescues)).
    #[default]
    Preemptive,
    /// Every lane pinned to its own core at normal priority; `heavy_lanes` of the cores
    /// serve heavy work first, and light lanes take heavy work by the cost-aware rule.
    /// Lanes run each call to completion, so a light call that arrives behind a heavy
    /// one on the same lane waits for all of it.
    Pinned,
}

impl LaneSplit {
    /// The lower-case name (`preemptive`, `pinned`).
    pub fn as_str(self) -> &'static str {
        match self {
            LaneSplit::Preemptive => "preemptive",
            LaneSplit::Pinned => "pinned",
        }
    }
}

impl fmt::Display for LaneSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LaneSplit {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "preemptive" => Ok(LaneSplit::Preemptive),
            "pinned" => Ok(LaneSplit::Pinned),
            other => Err(ParseError::new("lane split", other, "preemptive or pinned")),
        }
    }
}

/// The scheduling priority a lane's thread got from the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LanePriority {
    /// The OS default (`SCHED_OTHER`, nice 0 on Linux).
    Normal,
    /// Linux `SCHED_IDLE`: runs only on time no normal thread wants, and is preempted
    /// as soon as one wakes.
    Idle,
    /// A raised nice value (the fallback where `SCHED_IDLE` is refused): weighted less
    /// by the scheduler, but not preempted at once.
    Nice(i8),
    /// A lower priority was asked for and refused (or the OS has none): the thread runs
    /// at normal priority, and cheap work no longer preempts it.
    Refused,
}

impl fmt::Display for LanePriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LanePriority::Normal => f.write_str("normal"),
            LanePriority::Idle => f.write_str("idle"),
            LanePriority::Nice(n) => write!(f, "nice {n}"),
            LanePriority::Refused => f.write_str("normal (lower refused)"),
        }
    }
}

/// Which layer of routing made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteSource {
    /// A manual override from the control port.
    Override,
    /// A `pin <op> remote` override that could not be honoured (the link is down or no
    /// live worker serves the operation): the token ran on the local set the router
    /// chose.
    OverrideUnmet,
    /// The learned cost model.
    Model,
    /// The weight declared at registration.
    Tag,
    /// A rule of thumb without a model (the running-average router, the benchmark
    /// oracle).
    Heuristic,
}

impl RouteSource {
    /// The lower-case name (`override`, `override_unmet`, `model`, `tag`, `heuristic`).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Override => "override",
            RouteSource::OverrideUnmet => "override_unmet",
            RouteSource::Model => "model",
            RouteSource::Tag => "tag",
            RouteSource::Heuristic => "heuristic",
        }
    }
}

/// A name that is none of a type's values: what parsing a [`Weight`], a [`LaneSet`], a
/// [`LaneSplit`] or a remote placement from text gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?}: expected {expected}")]
#[non_exhaustive]
pub struct ParseError {
    /// What was parsed ("weight", "lane set", …).
    pub what: &'static str,
    /// The text given.
    pub found: String,
    /// The names accepted.
    pub expected: &'static str,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, found: &str, expected: &'static str) -> Self {
        ParseError { what, found: found.to_string(), expected }
    }
}

/// Where and how a token runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

impl Placement {
    /// A placement on `lanes` in batches of `batch` (at least 1), predicted to run
    /// `predicted_ns` a token, decided by `source`; no cost class.
    pub fn new(lanes: LaneSet, batch: u32, predicted_ns: u64, source: RouteSource) -> Self {
        Placement { lanes, batch: batch.max(1), class: None, predicted_ns, source }
    }

    /// The same placement, with the model's cost class.
    pub fn with_class(self, class: u8) -> Self {
        Placement { class: Some(class), ..self }
    }
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
        assert!("huge".parse::<Weight>().unwrap_err().to_string().contains("huge"));
        assert!("elsewhere".parse::<LaneSet>().unwrap_err().to_string().contains("elsewhere"));
    }
}
