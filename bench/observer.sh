#!/usr/bin/env bash
# Events decoded, enriched, filtered and kept in the ring per second, on one core.
# Prints a number; never fails on it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture throughput 2>&1 |
  grep -E 'events/s'
