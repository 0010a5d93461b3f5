//! `trainer`: fit, evaluate and inspect tokengate cost models (see [`trainer::cli`]).

fn main() -> anyhow::Result<()> {
    trainer::cli::run(clap::Parser::parse())
}
