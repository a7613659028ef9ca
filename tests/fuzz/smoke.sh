#!/usr/bin/env bash
# Fuzz smoke test (ctest Fuzz.SmokeBuildsHarnessesAndRunsSeeds, tests/fuzz/smoke.cmake): run_fuzzers.sh
# for SECONDS_PER_TARGET (default 5, its shortest run) in BUILD, from a clean slate each time: the
# corpora and saved findings of earlier runs are removed first, so that a seed that crashes fails every
# run (run_fuzzers.sh counts only new findings) and the run does not grow with the corpus.
#
#   tests/fuzz/smoke.sh BUILD CXX [SECONDS_PER_TARGET]
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BUILD CXX [SECONDS_PER_TARGET]" >&2; exit 2; }
build=$1
rm -rf "$build/fuzz"
VITMSN_FUZZ_BUILD=$build CXX=$2 exec bash "$(dirname "${BASH_SOURCE[0]}")/run_fuzzers.sh" "${3:-5}"
