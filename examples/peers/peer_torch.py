"""Peer benchmark: the same ViT-MSN forward in PyTorch eager (what a Python user runs), on the CPU.

    apt-get install python3-torch python3-numpy libopenblas0-pthread   # Debian's PyTorch, OpenBLAS-backed
    THREADS=2 /usr/bin/python3 examples/peers/peer_torch.py MODEL.safetensors [RUNS] [HEADS]

MODEL.safetensors: float32, Hugging Face names without prefix (vitmsn-synth OUT_DIR writes
OUT_DIR/model.safetensors). Runs RUNS timed forwards of one 224x224 input (numpy RandomState(0), as
peer_onnxruntime.sh) after one warm-up, prints JSON with each time and the median. torch_vit.py
matches HF's float64 output to 2e-7.
"""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_vit  # noqa: E402
from safetensors_np import read_safetensors  # noqa: E402

if len(sys.argv) < 2:
    sys.exit("usage: peer_torch.py MODEL.safetensors [RUNS] [HEADS]")
path = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
heads = int(sys.argv[3]) if len(sys.argv) > 3 else 16
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
sd, _ = read_safetensors(path)
cfg = {"hidden_size": sd["embeddings.cls_token"].shape[-1], "num_attention_heads": heads,
       "patch_size": sd["embeddings.patch_embeddings.projection.weight"].shape[-1],
       "num_hidden_layers": len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})}
w = torch_vit.to_torch(sd)
x = torch.from_numpy(np.random.RandomState(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
ts = []
for i in range(runs + 1):
    t = time.perf_counter()
    torch_vit.forward(w, x, cfg)
    ts.append(time.perf_counter() - t)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "times_s": ts[1:],
                  "median_s": float(np.median(ts[1:]))}))
