#!/usr/bin/env bash
# Side-by-side benchmark in one run: vitmsn-bench and the PyTorch peer (shared/bench/peer_torch.py,
# Debian python3-torch) on the same full-size synthetic ViT-L/7, alternating, same threads.
#
#   examples/bench_vs_pytorch.sh [MODEL_DIR] [ROUNDS]
#
# MODEL_DIR defaults to build/synth-vit-msn-large-7 (made with shared/bench/make_synth_model.py when
# missing, 1.2 GB). Prints each round, then the medians and the speed ratio; the last line is JSON.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
shared="${VITMSN_SHARED:-$here/../shared}"
model="${1:-$here/build/synth-vit-msn-large-7}"
rounds="${2:-3}"
threads="${THREADS:-$(nproc)}"
bench="${VITMSN_BENCH:-$here/build/examples/vitmsn-bench}"
py=/usr/bin/python3

[ -x "$bench" ] || { echo "error: $bench not built (cmake --build build)" >&2; exit 1; }
$py -c "import torch, numpy" 2>/dev/null || { echo "error: $py lacks torch/numpy: apt-get install python3-torch python3-numpy" >&2; exit 1; }
if [ ! -f "$model/model.safetensors" ]; then
  echo "making the synthetic ViT-L/7 in $model (1.2 GB)"
  $py "$shared/bench/make_synth_model.py" "$model" >/dev/null
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, $threads threads; $(date -u +%F)"
ours=(); theirs=()
for r in $(seq 1 "$rounds"); do
  o=$("$bench" --model "$model" --threads "$threads" --runs 3 --warmup 1 | tail -1)
  t=$(THREADS=$threads $py "$shared/bench/peer_torch.py" "$model/model.safetensors" 3 | tail -1)
  os=$($py -c "import json,sys; print(json.loads(sys.argv[1])['seconds_per_image'])" "$o")
  ts=$($py -c "import json,sys; print(json.loads(sys.argv[1])['median_s'])" "$t")
  echo "round $r: vitmsn $os s/image, pytorch $ts s/image"
  echo "  vitmsn:  $o"
  echo "  pytorch: $t"
  ours+=("$os"); theirs+=("$ts")
done
$py - "${ours[*]}" "${theirs[*]}" "$o" <<'PY'
import json, statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
last = json.loads(sys.argv[3])
mo, mt = statistics.median(ours), statistics.median(theirs)
print(f"median: vitmsn {mo:.3f} s/image ({last['gflop_per_image'] / mo:.1f} GFLOP/s, "
      f"{100 * last['gflop_per_image'] / mo / last['fma_peak_gflops']:.1f} % of the {last['fma_peak_gflops']:.0f} GFLOP/s FMA peak), "
      f"pytorch {mt:.3f} s/image: vitmsn is {mt / mo:.2f}x faster")
print(json.dumps({"vitmsn_seconds": mo, "pytorch_seconds": mt, "speedup": mt / mo,
                  "fma_peak_gflops": last["fma_peak_gflops"], "peak_fraction": last["gflop_per_image"] / mo / last["fma_peak_gflops"]}))
PY
