#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan), makes seed corpora from tests/data and
# make_seeds.py, and runs each target in turn for SECONDS_PER_TARGET (default 600), one process at a
# time at low priority. Prints executions, coverage and findings per target; exits 1 when a target
# produced a finding (crash, leak, UB, timeout > 10 s, RSS > 2 GB), whose input is then under
# <build>/fuzz/<target>/artifacts/. Every saved input is replayed once more at the end: one that
# no longer fails (a timeout because the process was descheduled on a busy machine, say) is
# reported as "flaky", not counted as a finding, and moved to artifacts/flaky/; crashes always count.
#
#   tests/fuzz/run_fuzzers.sh [SECONDS_PER_TARGET] [TARGET...]     TARGET: safetensors json image torch npy
#
# Environment: VITMSN_FUZZ_BUILD (build folder, default <repo>/build-fuzz), CXX (default clang++).
# The corpus each target grows is kept in <build>/fuzz/<target>/corpus and reused by the next run.
set -euo pipefail

seconds=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(safetensors json image torch npy)
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "error: SECONDS_PER_TARGET must be a positive integer" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${VITMSN_FUZZ_BUILD:-$root/build-fuzz}
work=$build/fuzz

# Largest input per target: enough for every fixture of interest, small enough for fast iterations.
declare -A max_len=([safetensors]=16384 [json]=4096 [image]=65536 [torch]=16384 [npy]=4096)
for t in "${targets[@]}"; do
  [[ -n ${max_len[$t]:-} ]] || { echo "error: unknown target '$t' (safetensors json image torch npy)" >&2; exit 2; }
done

echo "== build ($build)"
# Configured every time (cheap with a cache): a target added since the last run must be known to make.
CXX=${CXX:-clang++} cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVITMSN_FUZZ=ON \
  -DVITMSN_SANITIZE=ON -DVITMSN_BUILD_TESTS=OFF -DVITMSN_BUILD_EXAMPLES=OFF -DVITMSN_INSTALL=OFF >/dev/null
cmake --build "$build" -j2 --target "${targets[@]/#/fuzz_}"

# --- seed corpora: fixtures of each kind (no larger than max_len), crafted seeds, saved findings ----
crafted=$work/crafted
rm -rf "$crafted"
if command -v python3 >/dev/null; then
  python3 "$root/tests/fuzz/make_seeds.py" "$crafted"
else
  echo "warning: no python3, crafted seeds skipped (fixtures only)" >&2
fi

fixtures() {  # fixtures of target $1, one path a line
  local d=$root/tests/data
  case $1 in
    safetensors) find "$d" -name '*.safetensors' ;;
    json) find "$d" -name '*.json' ;;
    image) find "$d/images" "$d/pillow" -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.gif' -o -name '*.bmp' \) ;;
    torch) find "$d/torch" "$d/models" -name '*.pt' -o -name '*.bin' ;;
    npy) find "$d" -name '*.npy' ;;
  esac
  if [[ -d $d/fuzz/$1 ]]; then find "$d/fuzz/$1" -type f; fi
  if [[ -d $crafted/$1 ]]; then find "$crafted/$1" -type f; fi
}

for t in "${targets[@]}"; do
  seeds=$work/$t/seeds
  rm -rf "$seeds"
  mkdir -p "$seeds" "$work/$t/corpus" "$work/$t/artifacts"
  n=0
  while IFS= read -r f; do
    if [[ $(stat -c %s "$f") -le ${max_len[$t]} ]]; then
      cp "$f" "$seeds/$(printf '%03d' $n)-$(basename "$f")"
      n=$((n + 1))
    fi
  done < <(fixtures "$t" | sort)
  echo "== $t: $n seeds"
done

# --- runs --------------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
status=0
for t in "${targets[@]}"; do
  dir=$work/$t
  exe=$build/tests/fuzz/fuzz_$t
  before=$(find "$dir/artifacts" -maxdepth 1 -type f | sort)
  start=$(date +%s)
  runs=0 execs=0 cov=0 ft=0 rss=0
  : >"$dir/fuzz.log"
  echo "== $t: fuzzing for ${seconds}s"
  # A run stops at its first finding; the next one goes on with the rest of the time.
  while :; do
    remaining=$((seconds - ($(date +%s) - start)))
    ((remaining >= 5)) || break
    runs=$((runs + 1))
    (cd "$dir" && rm -f fuzz-0.log &&
      nice -n 10 "$exe" corpus seeds -dict="$root/tests/fuzz/$t.dict" -max_total_time=$remaining \
        -rss_limit_mb=2048 -timeout=10 -max_len=${max_len[$t]} -jobs=1 -workers=1 \
        -artifact_prefix="$dir/artifacts/" -print_final_stats=1 >/dev/null 2>&1) || true
    cat "$dir/fuzz-0.log" >>"$dir/fuzz.log" 2>/dev/null || true
    e=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$dir/fuzz-0.log" 2>/dev/null | tail -1 | awk '{print $2}' || true)
    execs=$((execs + ${e:-0}))
    line=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$dir/fuzz-0.log" 2>/dev/null | tail -1 || true)
    if [[ -n $line ]]; then
      cov=$(sed -E 's/.*cov: ([0-9]+).*/\1/' <<<"$line")
      ft=$(sed -E 's/.*ft: ([0-9]+).*/\1/' <<<"$line")
    fi
    r=$(grep -oE 'stat::peak_rss_mb: *[0-9]+' "$dir/fuzz-0.log" 2>/dev/null | tail -1 | awk '{print $2}' || true)
    ((${r:-0} > rss)) && rss=${r:-0}
    grep -E '^==[0-9]+==ERROR|runtime error:|ERROR: libFuzzer|fuzz invariant violated|^SUMMARY' \
      "$dir/fuzz-0.log" 2>/dev/null | head -5 | sed "s/^/   [$t] /" || true
  done
  elapsed=$(($(date +%s) - start))
  # Replay what this target saved: a finding must fail again on its own.
  findings=0 flaky=0
  mkdir -p "$dir/artifacts/flaky"
  while IFS= read -r a; do
    [[ -n $a ]] || continue
    # Only a timeout or an out-of-memory can be the machine's fault; a crash (a sanitizer report, a
    # signal) is a finding even when the replay passes: it may have read memory whose content
    # differs from run to run.
    replayed=0
    nice -n 10 "$exe" -timeout=10 -rss_limit_mb=2048 "$a" >"$a.replay.log" 2>&1 || replayed=$?
    if [[ $replayed -eq 0 && $(basename "$a") != crash-* ]]; then
      flaky=$((flaky + 1))
      mv "$a" "$a.replay.log" "$dir/artifacts/flaky/"
      echo "   [$t] flaky (passes when replayed): $(basename "$a")"
    else
      findings=$((findings + 1))
      echo "   [$t] FINDING: $a (replay log: $a.replay.log)"
    fi
  done < <(comm -13 <(echo "$before") <(find "$dir/artifacts" -maxdepth 1 -type f ! -name '*.replay.log' | sort))
  corpus=$(find "$dir/corpus" -type f | wc -l)
  ((findings == 0)) || status=1
  summary+=("$(printf '%-12s %6ds %12d %9d %7d %7d %8d %6dMB %9d %6d' "$t" "$elapsed" "$execs" \
    $((execs / (elapsed > 0 ? elapsed : 1))) "$cov" "$ft" "$corpus" "$rss" "$findings" "$flaky")")
done

echo
printf '%-12s %7s %12s %9s %7s %7s %8s %8s %9s %6s\n' target time executions exec/s cov ft corpus peakRSS findings flaky
printf '%s\n' "${summary[@]}"
if ((status != 0)); then
  echo "findings: inputs under $work/<target>/artifacts/ (logs: $work/<target>/fuzz.log)"
fi
exit $status
