//! `trainer`: fit, evaluate and inspect tokengate cost models (see [`trainer::cli`]).

fn main() {
    if let Err(error) = trainer::cli::run(clap::Parser::parse()) {
        // One line, as `tokengate trainer` prints it (no backtrace for a user's error).
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
