#!/usr/bin/env bash
# Peer benchmark: ONNX Runtime's CPU engine (MLAS kernels, graph optimisations on) on the same model.
#
#   THREADS=2 examples/peers/peer_onnxruntime.sh MODEL_DIR [RUNS]
#
# MODEL_DIR: a float32 ViT-MSN folder with HF names (e.g. written by `vitmsn-synth MODEL_DIR`).
# First use: installs onnxruntime-node from the npm registry into $ORT_CACHE (default
# /tmp/vitmsn-onnxruntime; install scripts off: the CPU library ships inside the package) and exports
# MODEL_DIR to ONNX with Debian's torch (export_onnx.py: about 1 min, 1.2 GB for ViT-L/7, cached by
# the model file's size and mtime). Input: the same random 224x224 image as peer_torch.py. Last
# line: JSON with median_s, times_s, load_s and the first CLS values. Use an odd RUNS.
# Needs: nodejs + npm, python3-torch, python3-numpy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="${1:?usage: peer_onnxruntime.sh MODEL_DIR [RUNS]}"
runs="${2:-3}"
threads="${THREADS:-$(nproc)}"
cache="${ORT_CACHE:-/tmp/vitmsn-onnxruntime}"
py=/usr/bin/python3
[ -f "$model/model.safetensors" ] || { echo "error: $model/model.safetensors not found" >&2; exit 1; }
mkdir -p "$cache"
if [ ! -f "$cache/node_modules/onnxruntime-node/package.json" ]; then
  (cd "$cache" && npm install --silent --no-audit --no-fund --ignore-scripts onnxruntime-node@1.30.0 >&2)
fi
key=$(stat -c '%s-%Y' "$model/model.safetensors")
onnx="$cache/model-$key.onnx"
if [ ! -f "$onnx" ]; then
  echo "exporting $model to ONNX (once)" >&2
  $py "$here/export_onnx.py" "$model" "$onnx.tmp" >&2 && mv "$onnx.tmp" "$onnx"
fi
$py -c "import numpy as np, sys; np.random.RandomState(0).standard_normal((1,3,224,224)).astype(np.float32).tofile(sys.argv[1])" "$cache/input.f32"
NODE_PATH="$cache/node_modules" node "$here/ort_bench.js" "$onnx" "$runs" "$threads" "$cache/input.f32"
