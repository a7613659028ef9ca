"""Exports a ViT-MSN model folder (float32 model.safetensors with HF names + config.json, e.g. written
by vitmsn-synth) to ONNX with Debian's torch, for peer_onnxruntime.sh.

    /usr/bin/python3 examples/peers/export_onnx.py MODEL_DIR OUT.onnx

The graph is torch_vit.py's forward (HF ViTMSNModel ops, fixed image_size input, dynamic batch),
opset 14, weights as initializers. Needs python3-torch and python3-numpy (Debian).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_vit  # noqa: E402
from safetensors_np import read_safetensors  # noqa: E402

if len(sys.argv) != 3:
    sys.exit("usage: export_onnx.py MODEL_DIR OUT.onnx")
model_dir, out = sys.argv[1], sys.argv[2]
with open(os.path.join(model_dir, "config.json")) as f:
    cfg = json.load(f)
sd, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
sd = {k[4:] if k.startswith("vit.") else k: v for k, v in sd.items() if not k.startswith("classifier")}


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(
            torch.from_numpy(np.ascontiguousarray(v)).float(), requires_grad=False) for k, v in sd.items()})

    def forward(self, x):
        return torch_vit.forward({k.replace("__", "."): v for k, v in self.w.items()}, x, cfg)


size = cfg.get("image_size", 224)
with torch.no_grad():
    torch.onnx.export(Encoder().eval(), (torch.zeros(1, 3, size, size),), out, opset_version=14,
                      input_names=["pixel_values"], output_names=["last_hidden_state"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}})
print("wrote", out, os.path.getsize(out), "bytes")
