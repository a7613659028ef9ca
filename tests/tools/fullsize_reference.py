"""Reference output of a full-size model for the `fullsize` ctest label: runs the plain PyTorch ViT-MSN
forward of examples/peers/torch_vit.py (which matches HF's float64 output to 2e-7) in float64 on the
chelsea pixel values of the fixtures (tests/data/expected/preprocess.*.safetensors), and writes
`chelsea.last_hidden_state` (F32) to MODEL_DIR/reference.safetensors.

    build/examples/vitmsn-synth MODEL_DIR                            # the synthetic ViT-L/7, 1.2 GB
    /usr/bin/python3 tests/tools/fullsize_reference.py MODEL_DIR      # needs python3-torch, python3-numpy
"""
import glob
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "examples", "peers"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_vit  # noqa: E402
from safetensors_np import read_safetensors, write_safetensors  # noqa: E402

if len(sys.argv) != 2:
    sys.exit("usage: fullsize_reference.py MODEL_DIR")
model_dir = sys.argv[1]
with open(os.path.join(model_dir, "config.json")) as f:
    cfg = json.load(f)
sd, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
pixels = None
for part in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "expected", "preprocess.*.safetensors"))):
    pre, _ = read_safetensors(part)
    if "chelsea.pixel_values" in pre:
        pixels = pre["chelsea.pixel_values"]
        break
if pixels is None:
    sys.exit("chelsea.pixel_values not found in tests/data/expected/preprocess.*.safetensors")
x = torch.from_numpy(pixels[None].astype(np.float64))
torch.set_num_threads(os.cpu_count())
out = torch_vit.forward(torch_vit.to_torch(sd, dtype=torch.float64), x, cfg)[0].numpy().astype(np.float32)
write_safetensors(os.path.join(model_dir, "reference.safetensors"), {"chelsea.last_hidden_state": out},
                  {"made_by": "tests/tools/fullsize_reference.py (torch_vit.py, float64)"})
print(out.shape, float(np.abs(out).max()))
