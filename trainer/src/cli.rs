//! The `trainer` command line (feature `cli`, on by default): fit, evaluate and inspect
//! cost models. The `trainer` binary and `tokengate trainer …` both run [`run`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::{dataset, eval, fit, report};

/// `trainer`'s arguments.
#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Fit tokengate's decision-tree cost model from its telemetry"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `trainer`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fit a model on Parquet telemetry and save it.
    Fit {
        /// Directories, files or globs of Parquet telemetry.
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<String>,
        /// Where to write the model.
        #[arg(long)]
        out: PathBuf,
        /// Depth bound of the tree.
        #[arg(long, default_value_t = 8)]
        max_depth: usize,
        /// Number of log-scale cost classes (edges at 10 µs × 20^k).
        #[arg(long, default_value_t = 4)]
        classes: usize,
        /// Explicit class edges in ns, comma-separated (e.g. 1000,10000,100000,1000000).
        #[arg(long, value_delimiter = ',')]
        edges_ns: Option<Vec<u64>>,
        /// Share of rows held out for validation.
        #[arg(long, default_value_t = 0.2)]
        validation_share: f64,
        /// Seed of the train/validation split.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Fewest training rows in a leaf.
        #[arg(long, default_value_t = 20)]
        min_leaf_rows: usize,
        /// One tree per operation, joined at the operations' boundaries, as online
        /// re-fits do: an operation's sizes are placed by its own rows only (the depth
        /// bound applies to each operation's tree).
        #[arg(long)]
        per_operation: bool,
    },
    /// Score a saved model on (other) telemetry.
    Eval {
        /// The model file.
        #[arg(long)]
        model: PathBuf,
        /// Directories, files or globs of Parquet telemetry.
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<String>,
    },
    /// Print a model's header, class table, tree and feature importance.
    Inspect {
        /// The model file.
        #[arg(long)]
        model: PathBuf,
        /// Print the tree as a TikZ picture instead.
        #[arg(long)]
        tikz: bool,
    },
}

/// Runs one `trainer` command, printing its report.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fit {
            data,
            out,
            max_depth,
            classes,
            edges_ns,
            validation_share,
            seed,
            min_leaf_rows,
            per_operation,
        } => {
            let data = read(&data)?;
            let options = fit::FitOptions {
                max_depth,
                classes,
                edges_ns,
                validation_share,
                seed,
                min_leaf_rows,
                per_operation,
                ..Default::default()
            };
            let spinner = spinner(format!("fitting on {} rows", data.rows.len()));
            let fitted = fit::fit(&data, &options)?;
            spinner.finish_and_clear();
            if fitted.flat_mismatches > 0 {
                bail!(
                    "internal error: the flat tree disagrees with linfa on {} rows",
                    fitted.flat_mismatches
                );
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&out, &fitted.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "read {} rows ({} skipped) from {} files",
                data.rows.len(),
                data.skipped,
                data.files.len()
            );
            println!("held-out {}", fitted.metrics);
            println!("wrote {} ({} bytes)", out.display(), fitted.bytes.len());
        }
        Command::Eval { model, data } => {
            let bytes = read_file(&model)?;
            let data = read(&data)?;
            let evaluation = eval::evaluate(&bytes, &data)
                .with_context(|| format!("evaluating {}", model.display()))?;
            if evaluation.metrics.rows == 0 {
                bail!(
                    "none of the {} rows is of an operation {} places (unknown to it, or \
                     logged with other cost features): nothing to score",
                    evaluation.unknown_op_rows,
                    model.display()
                );
            }
            println!("{}", evaluation.metrics);
            if evaluation.unknown_op_rows > 0 {
                println!(
                    "{} rows of operations the model does not place (unknown to it, or logged \
                     with other cost features: routed by their running averages)",
                    evaluation.unknown_op_rows
                );
            }
            for op in &evaluation.feature_mismatch {
                println!("{op}: the data's cost features differ from the model's");
            }
        }
        Command::Inspect { model, tikz } => {
            let bytes = read_file(&model)?;
            let (header, tree) = tokengate::model::linfa::decode(&bytes)
                .with_context(|| format!("decoding {}", model.display()))?;
            if tikz {
                println!("{}", tree.export_to_tikz().with_legend());
            } else {
                // Leaf runtimes come from the compiled model; a file that decodes but does
                // not compile is still described, without them.
                let leaf_ns = tokengate::model::Model::from_bytes(&bytes)
                    .map(|m| m.leaf_runtimes().to_vec())
                    .unwrap_or_default();
                print!("{}", report::describe(&header, &tree, &leaf_ns));
            }
        }
    }
    Ok(())
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read(inputs: &[String]) -> Result<dataset::Data> {
    let files = dataset::collect_files(inputs)?;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) && files.len() > 1 {
        bar.set_style(
            indicatif::ProgressStyle::with_template("reading {bar:30} {pos}/{len} files")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let data = dataset::load(&files, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(data)
}

fn spinner(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        spinner.set_message(message);
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    } else {
        spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    spinner
}
