#!/usr/bin/env bash
# Regenerates the shipped dataset (datasets/*.parquet) with the project's own
# workloads, then refits the shipped model (models/default.bin) from it.
# Run from the repository root: bash datasets/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
rm -f datasets/*.parquet
run() { ./target/release/tokengate run "$@" --router tags --log datasets --json > /dev/null; }
run mixed      --tokens 20000 --seed 11
run mislabeled --tokens 20000 --seed 12 --mislabel-share 0.25
run mislabeled --tokens 20000 --seed 13 --mislabel-share 0.5
run leibniz    --terms 200000 --log-sample 50
./target/release/trainer fit --data datasets --out models/default.bin
