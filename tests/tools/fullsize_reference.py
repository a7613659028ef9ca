"""Reference output of a full-size model for the `fullsize` ctest label: runs the plain PyTorch ViT-MSN
forward of shared/bench/torch_vit.py (which matches HF's float64 output to 2e-7) in float64 on the
chelsea pixel values of the fixtures, and writes `chelsea.last_hidden_state` (F32) next to the model.

    /usr/bin/python3 tests/tools/fullsize_reference.py SHARED_DIR MODEL_DIR   # needs python3-torch
"""
import os
import sys

shared, model_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(shared, "bench"))
sys.path.insert(0, os.path.join(shared, "fixtures", "tools"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_vit  # noqa: E402
import vitmsn_ref as R  # noqa: E402

sd, _ = R.read_safetensors(os.path.join(model_dir, "model.safetensors"))
pre, _ = R.read_safetensors(os.path.join(shared, "fixtures", "expected", "preprocess.safetensors"))
x = torch.from_numpy(pre["chelsea.pixel_values"][None].astype(np.float64))
cfg = {"hidden_size": 1024, "num_attention_heads": 16, "patch_size": 7, "num_hidden_layers": 24}
torch.set_num_threads(os.cpu_count())
out = torch_vit.forward(torch_vit.to_torch(sd, dtype=torch.float64), x, cfg)[0].numpy().astype(np.float32)
R.write_safetensors(os.path.join(model_dir, "reference.safetensors"), {"chelsea.last_hidden_state": out},
                    {"made_by": "tests/tools/fullsize_reference.py (torch_vit.py, float64)"})
print(out.shape, float(np.abs(out).max()))
