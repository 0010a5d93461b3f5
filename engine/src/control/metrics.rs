//! `GET /metrics`: the engine's counters in the Prometheus text format, encoded by
//! `prometheus-client`.
//!
//! Nothing here is updated on the hot path: a scrape reads, once, the counters the
//! engine keeps anyway (per-operation stats and latency buckets, per-lane tokens and
//! busy time, telemetry rows, the model's version and swaps) through a
//! [`Collector`], so an engine nobody scrapes pays nothing for this module.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Controller;
use crate::op::control::OpStats;
use crate::telemetry::histogram::octave_counts;

/// Latency buckets exported: upper bounds 2^10 ns (~1 µs) … 2^40 ns (~18 min); the
/// engine's finer and coarser buckets fold into the first and into `+Inf`.
const FIRST_BUCKET: usize = 10;
const LAST_BUCKET: usize = 40;
const _: () = assert!(LAST_BUCKET < 48);

/// A registry (prefix `tokengate`) whose one collector reads `controller` per scrape.
pub(super) fn registry(controller: Controller) -> Registry {
    let mut registry = Registry::with_prefix("tokengate");
    registry.register_collector(Box::new(EngineCollector { controller }));
    registry
}

#[derive(Debug)]
struct EngineCollector {
    controller: Controller,
}

type Outcome = (&'static str, &'static str, fn(&OpStats) -> u64);

/// One counter family per outcome, each labelled by `op`.
const OUTCOMES: [Outcome; 6] = [
    ("op_submitted", "Tokens admitted.", |s| s.submitted),
    ("op_completed", "Tokens that returned a value.", |s| s.completed),
    ("op_failed", "Tokens that panicked or returned an error.", |s| s.failed),
    ("op_cancelled", "Tokens cancelled before they started.", |s| s.cancelled),
    ("op_timed_out", "Tokens whose deadline passed.", |s| s.timed_out),
    ("op_rejected", "Tokens refused at admission.", |s| s.rejected),
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let controller = &self.controller;
        let ops: Vec<_> = controller
            .registry
            .ops()
            .iter()
            .map(|op| (op.name().to_string(), op.stats()))
            .collect();
        for (name, help, value) in OUTCOMES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (op, stats) in &ops {
                let labels = [("op", op.as_str())];
                ConstCounter::new(value(stats)).encode(family.encode_family(&labels)?)?;
            }
        }

        let help = "End-to-end latency, admission to resolution (each token timed at the end \
                    of its batch; power-of-two buckets here, 1/16-octave buckets on the dashboard).";
        let mut family = encoder.encode_descriptor(
            "op_latency",
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for op in controller.registry.ops() {
            let (fine, sum_ns) = op.control().latency().read();
            // Prometheus keeps power-of-two buckets; quantiles elsewhere read the fine ones.
            let counts = octave_counts(&fine);
            let count: u64 = counts.iter().sum();
            let buckets: Vec<(f64, u64)> = (FIRST_BUCKET..=LAST_BUCKET)
                .map(|k| {
                    let in_bucket = match k {
                        FIRST_BUCKET => counts[..=k].iter().sum(),
                        _ => counts[k],
                    };
                    ((1u64 << k) as f64 / 1e9, in_bucket)
                })
                .collect();
            let labels = [("op", op.name())];
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum_ns as f64 / 1e9,
                count,
                &buckets,
                None,
            )?;
        }

        let lanes = controller.lanes.stats();
        let sets: Vec<_> =
            controller.lanes.infos().into_iter().map(|info| info.set.as_str()).collect();
        let lane_labels = |index: usize| {
            [("lane", index.to_string()), ("set", sets.get(index).copied().unwrap_or("").into())]
        };
        let mut family = encoder.encode_descriptor(
            "lane_busy",
            "Time each lane was not idle (idle: yielding or parked for want of work).",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (index, lane) in lanes.iter().enumerate() {
            let busy = ConstCounter::new(lane.busy_ns as f64 / 1e9);
            busy.encode(family.encode_family(&lane_labels(index))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lane_tokens",
            "Tokens each lane took.",
            None,
            MetricType::Counter,
        )?;
        for (index, lane) in lanes.iter().enumerate() {
            ConstCounter::new(lane.tokens).encode(family.encode_family(&lane_labels(index))?)?;
        }

        let telemetry = controller.lanes.telemetry();
        let (recorded, dropped, written) = telemetry.map_or((0, 0, 0), |t| {
            let stats = t.stats();
            let written = t.live.written.load(std::sync::atomic::Ordering::Relaxed);
            (stats.recorded, stats.dropped, written)
        });
        let status = self.controller.model_status();
        let counters = [
            ("telemetry_rows_recorded", "Telemetry rows handed to the writer.", recorded),
            ("telemetry_rows_written", "Telemetry rows written to Parquet.", written),
            ("telemetry_rows_dropped", "Telemetry rows dropped: the writer fell behind.", dropped),
            ("model_swaps", "Models swapped in by online adaptation.", u64::from(status.swaps)),
            (
                "model_cell_moves",
                "Size cells moved between lane sets by online adaptation's cost watch.",
                status.cell_moves,
            ),
            (
                "lane_rescues",
                "Times other threads starved the idle-priority heavy lanes and the light lanes \
                 took heavy work until it passed.",
                controller.lanes.rescues(),
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }

        let version = ConstGauge::new(i64::from(status.model_version));
        let help = "The model routing now (0: no model).";
        version.encode(encoder.encode_descriptor(
            "model_version",
            help,
            None,
            version.metric_type(),
        )?)?;
        Ok(())
    }
}
