//! `compare text`: the content-driven stream under the tags, a model fitted on the size
//! hint alone, a model fitted with the operations' cost features, and an oracle. Both
//! models are fitted here, on a logged run of another seed's documents, the same way
//! (one tree per operation), so the only difference is what the operations told them.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokengate::model::Model;
use tokengate::router::{LearnedRouter, Router, StaticRouter};
use tokengate::telemetry::{RecordOutcome, TokenRecord};
use tokengate_workloads::mixed::RouterRun;
use tokengate_workloads::text::{self, TextOracle, Told};
use trainer::dataset::{Data, Row};
use trainer::fit::{fit, FitOptions, Fitted};

use crate::builder;
use crate::compare::{engine_defaults, lane_settings, print_compare, router_summary, CompareArgs};
use crate::run::{light_lanes, text_plan};

/// The two fitted models: size only, and with the cost features.
struct Models {
    size: Fitted,
    features: Fitted,
}

/// Logged runs of the training stream: the first is fitted on; the others only tell how
/// often the same document's logged class repeats (see [`Labels`]).
const LABEL_RUNS: usize = 5;

/// How repeatable the labels are: each call's class by its logged run time, over
/// [`LABEL_RUNS`] logged runs of the same documents on fresh engines.
struct Labels {
    all: Repeat,
    /// By operation, in [`text::OPS`] order.
    per_op: Vec<Repeat>,
    documents: usize,
}

/// Label repeatability over some documents.
#[derive(Default, Clone, Copy)]
struct Repeat {
    /// Pairs of runs of one document, and how many of them gave both runs one class.
    pairs: u64,
    agree: u64,
    /// Each run's class predicted by the majority of the other runs' (a tie shares the
    /// credit): what a predictor that knew every document's other measurements would
    /// score against one run's labels — an estimate, from below, of the accuracy any
    /// model can reach against labels this noisy.
    scored: u64,
    credit: f64,
}

impl Repeat {
    fn add(&mut self, labels: &[usize]) {
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                self.pairs += 1;
                self.agree += u64::from(a == b);
            }
            let mut votes = [0u32; 8];
            for (j, other) in labels.iter().enumerate() {
                if j != i {
                    votes[(*other).min(7)] += 1;
                }
            }
            let top = *votes.iter().max().unwrap_or(&0);
            let tied = votes.iter().filter(|&&v| v == top).count() as f64;
            self.scored += 1;
            if votes[(*a).min(7)] == top {
                self.credit += 1.0 / tied;
            }
        }
    }

    fn json(&self) -> Value {
        let share = |n: f64, d: u64| if d == 0 { f64::NAN } else { n / d as f64 };
        json!({
            "agreement": share(self.agree as f64, self.pairs),
            "ceiling": share(self.credit, self.scored),
        })
    }
}

impl Labels {
    /// `classes[run][document]`, for documents logged (completed) in every run;
    /// `ops[document]`: its operation.
    fn of(classes: &[Vec<Option<usize>>], ops: &[usize]) -> Labels {
        let documents = classes.first().map_or(0, Vec::len);
        let mut all = Repeat::default();
        let mut per_op = vec![Repeat::default(); text::OPS.len()];
        for (doc, &op) in ops.iter().enumerate().take(documents) {
            let Some(labels) = classes.iter().map(|run| run[doc]).collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            all.add(&labels);
            if let Some(repeat) = per_op.get_mut(op) {
                repeat.add(&labels);
            }
        }
        // Documents logged in every run (a call that did not complete in one is left out).
        let documents = (all.scored / LABEL_RUNS as u64) as usize;
        Labels { all, per_op, documents }
    }

    fn json(&self) -> Value {
        let per_op: serde_json::Map<String, Value> =
            text::OPS.iter().zip(&self.per_op).map(|(op, r)| (op.to_string(), r.json())).collect();
        let mut value = self.all.json();
        value["runs"] = json!(LABEL_RUNS);
        value["documents"] = json!(self.documents);
        value["per_op"] = Value::Object(per_op);
        value
    }
}

/// Logs one run of `training` on a tag-routed engine: its completed rows, and each
/// document's class by its logged run time (plan order; `None`: not completed).
fn log_training(
    args: &CompareArgs,
    training: &[text::TextCall],
    load: f64,
) -> Result<(Vec<Row>, Vec<Option<usize>>)> {
    let engine = builder(&args.engine)
        .router(Arc::new(StaticRouter::new(args.engine.batch)))
        .log_in_memory()
        .build()
        .context("building the logging engine")?;
    let rate = text::rate_for(training, load, light_lanes(&engine));
    let ops = text::TextOps::register(&engine, Told::Features)?;
    let run = text::drive(&ops, training, rate);
    drop(ops);
    engine.shutdown();
    if run.failures + run.lost > 0 {
        bail!("the logging run lost {} and failed {} calls", run.lost, run.failures);
    }
    let edges = tokengate::features::class_edges_ns(FitOptions::default().classes);
    let records: std::collections::HashMap<u64, TokenRecord> = engine
        .take_records()
        .into_iter()
        .filter(|r| r.outcome == RecordOutcome::Completed)
        .map(|r| (r.token_id, r))
        .collect();
    let classes = run
        .ids
        .iter()
        .map(|id| records.get(id).map(|r| tokengate::features::class_of(r.run_ns, &edges)))
        .collect();
    // A fresh engine numbers its operations in registration order: `text::OPS`'s.
    let rows = run
        .ids
        .iter()
        .filter_map(|id| records.get(id))
        .map(|r| Row { op: r.op, arg_size: r.arg_size, cost: r.cost, run_ns: r.run_ns })
        .collect();
    Ok((rows, classes))
}

/// Logs [`LABEL_RUNS`] runs of `training` on a tag-routed engine, fits both models on
/// the first one's rows, and measures how repeatable the labels are.
fn fit_models(
    args: &CompareArgs,
    training: &[text::TextCall],
    load: f64,
) -> Result<(Models, Labels)> {
    let (rows, first) = log_training(args, training, load)?;
    let mut classes = vec![first];
    for _ in 1..LABEL_RUNS {
        classes.push(log_training(args, training, load)?.1);
    }
    let ops: Vec<usize> = training.iter().map(|call| call.op).collect();
    let labels = Labels::of(&classes, &ops);
    let ops: Vec<String> = text::OPS.iter().map(|s| s.to_string()).collect();
    let options = FitOptions { per_operation: true, ..FitOptions::default() };
    let features = Data {
        ops: ops.clone(),
        op_features: text::cost_feature_names(),
        rows: rows.clone(),
        ..Data::default()
    };
    let size_only = Data {
        ops,
        rows: rows.into_iter().map(|r| Row { cost: tokengate::features::NO_COST, ..r }).collect(),
        ..Data::default()
    };
    let models = Models {
        size: fit(&size_only, &options).context("fitting the size-only model")?,
        features: fit(&features, &options).context("fitting the model with features")?,
    };
    Ok((models, labels))
}

fn model_json(fitted: &Fitted) -> Value {
    let per_op: serde_json::Map<String, Value> = fitted
        .metrics
        .per_op
        .iter()
        .map(|(name, right, total)| (name.clone(), json!(*right as f64 / *total as f64)))
        .collect();
    let importance: serde_json::Map<String, Value> = fitted
        .metrics
        .importance
        .iter()
        .map(|(op, inputs)| {
            let inputs: serde_json::Map<String, Value> =
                inputs.iter().map(|(name, share)| (name.clone(), json!(share))).collect();
            (op.clone(), Value::Object(inputs))
        })
        .collect();
    json!({
        "accuracy": fitted.metrics.accuracy,
        "per_op_accuracy": per_op,
        "importance": importance,
        "rows": fitted.header.training.rows,
    })
}

pub(crate) fn compare_text(args: CompareArgs) -> Result<()> {
    let calls = args.stream.text_calls()?;
    let (seed, load) = (args.stream.seed(), args.stream.load);
    // The models learn from other documents than the ones they are scored on.
    let training = text_plan(calls, seed.wrapping_add(1_000), args.json);
    let (models, labels) = fit_models(&args, &training, load)?;
    drop(training);
    let plan = text_plan(calls, seed, args.json);
    let size_model = Model::from_bytes(&models.size.bytes)?;
    let feature_model = Model::from_bytes(&models.features.bytes)?;
    let tags = StaticRouter::new(args.engine.batch);
    let routers: Vec<(&str, Arc<dyn Router>, Told)> = vec![
        ("tags", Arc::new(tags), Told::Size),
        ("learned_size", Arc::new(LearnedRouter::new(size_model, tags)), Told::Size),
        ("learned", Arc::new(LearnedRouter::new(feature_model, tags)), Told::Features),
        ("oracle", Arc::new(TextOracle::new(&plan)), Told::Index),
    ];
    let cores = {
        let probe = builder(&args.engine).build().context("building the engine")?;
        let cores = light_lanes(&probe);
        probe.shutdown();
        cores
    };
    let rate = text::rate_for(&plan, load, cores);
    let mut runs: Vec<Vec<RouterRun>> = vec![Vec::new(); routers.len()];
    let mut digest = None;
    // Interleaved repeats, so a slow patch of a shared machine hits every router alike.
    for repeat in 0..args.repeat {
        for ((name, router, told), runs) in routers.iter().zip(&mut runs) {
            crate::compare::run_progress(args.json, name, repeat, args.repeat);
            let engine = builder(&args.engine).router(Arc::clone(router));
            let (run, run_digest) =
                text::run_with(engine, &plan, rate, *told).map_err(|e| anyhow!("{name}: {e}"))?;
            if run.failures > 0 {
                bail!("{name}: {} calls failed or were lost", run.failures);
            }
            if *digest.get_or_insert(run_digest) != run_digest {
                bail!("{name}: the results differ from the first run's");
            }
            runs.push(run);
        }
    }
    let mut results = serde_json::Map::new();
    for ((name, ..), runs) in routers.iter().zip(&runs) {
        results.insert(name.to_string(), router_summary(runs));
    }
    let heavy_share = plan.iter().filter(|c| c.truth() == tokengate::Weight::Heavy).count() as f64
        / plan.len() as f64;
    let report = json!({
        "workload": "text",
        "tokens": plan.len(),
        "repeat": args.repeat,
        "seed": seed,
        "rate": rate.round(),
        "load": load,
        "heavy_share": heavy_share,
        "mislabel_share": 0.0,
        "engine_defaults": engine_defaults(&args.engine),
        "lane_settings": lane_settings(&args.engine),
        "model_version": format!(
            "size {:08x}, features {:08x}",
            Model::from_bytes(&models.size.bytes)?.version(),
            Model::from_bytes(&models.features.bytes)?.version()
        ),
        "models": {
            "learned_size": model_json(&models.size),
            "learned": model_json(&models.features),
        },
        "labels": labels.json(),
        "freeze_watch": crate::compare::freeze_watch(&runs),
        "routers": results,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    print_compare(&report);
    let labels = &report["labels"];
    let pct = |v: &Value| v.as_f64().unwrap_or(f64::NAN) * 100.0;
    println!(
        "labels: the same document's logged class repeats in {:.1}% of pairs of {} logged \
         runs; predicting one run's class from the others' scores {:.1}% (about the best a \
         model can expect against them)",
        pct(&labels["agreement"]),
        LABEL_RUNS,
        pct(&labels["ceiling"])
    );
    for (name, key) in [("size only", "learned_size"), ("with cost features", "learned")] {
        let model = &report["models"][key];
        println!("model {name}: held-out accuracy {:.1}%", pct(&model["accuracy"]));
        for (op, accuracy) in model["per_op_accuracy"].as_object().into_iter().flatten() {
            let inputs = model["importance"][op]
                .as_object()
                .map(|inputs| {
                    inputs
                        .iter()
                        .map(|(input, share)| {
                            format!("{input} {:.2}", share.as_f64().unwrap_or(0.0))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!(
                "  {op:<10} {:>6.1}% (ceiling {:.1}%)  {inputs}",
                pct(accuracy),
                pct(&labels["per_op"][op]["ceiling"])
            );
        }
    }
    Ok(())
}
