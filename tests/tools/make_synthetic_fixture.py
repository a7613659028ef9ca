"""Expected output of the tiny synthetic model for tests/synthetic_test.cpp, standing alone: the
synthetic weights (the splitmix64-style generator of vitmsn's synthetic_tensors(), which is also
synth_state() of the fixtures' Python reference, vitmsn_ref.py) and a plain float64 PyTorch ViT-MSN forward
(the ops of Hugging Face's eager ViTMSNModel, no position interpolation), on a fixed input pattern.
Writes tests/data/expected/synthetic_tiny.safetensors: last_hidden_state rows 0 (CLS), 1, 500 and
1024, as float32 [4, 64].

    /usr/bin/python3 tests/tools/make_synthetic_fixture.py    # needs numpy and torch
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

CFG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
       "patch_size": 7, "image_size": 224, "num_channels": 3, "layer_norm_eps": 1e-6}
ROWS = [0, 1, 500, 1024]


def keys(cfg):
    """(name, shape, kind) in Hugging Face's order; kind picks the scale of the generator."""
    D, Fw, L, P, C = (cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "patch_size",
                                        "num_channels"))
    n = (cfg["image_size"] // P) ** 2 + 1
    out = [("embeddings.cls_token", (1, 1, D), "embed"), ("embeddings.position_embeddings", (1, n, D), "embed"),
           ("embeddings.patch_embeddings.projection.weight", (D, C, P, P), "w"),
           ("embeddings.patch_embeddings.projection.bias", (D,), "b")]
    for i in range(L):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            out += [(p + f"attention.attention.{m}.weight", (D, D), "w"), (p + f"attention.attention.{m}.bias", (D,), "b")]
        out += [(p + "attention.output.dense.weight", (D, D), "w"), (p + "attention.output.dense.bias", (D,), "b"),
                (p + "intermediate.dense.weight", (Fw, D), "w"), (p + "intermediate.dense.bias", (Fw,), "b"),
                (p + "output.dense.weight", (D, Fw), "w"), (p + "output.dense.bias", (D,), "b"),
                (p + "layernorm_before.weight", (D,), "lnw"), (p + "layernorm_before.bias", (D,), "b"),
                (p + "layernorm_after.weight", (D,), "lnw"), (p + "layernorm_after.bias", (D,), "b")]
    return out + [("layernorm.weight", (D,), "lnw"), ("layernorm.bias", (D,), "b")]


def uniforms(t, count):
    """24-bit uniforms in [0, 1) of tensor t: x = i*phi64 + (t+1)*C1; x ^= x>>31; x *= C2; x ^= x>>29."""
    i = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64(t + 1) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return (x >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def weights(cfg):
    sd = {}
    for t, (name, shape, kind) in enumerate(keys(cfg)):
        u = uniforms(t, int(np.prod(shape))) * 2.0 - 1.0
        scale = {"w": 1.7 / math.sqrt(int(np.prod(shape[1:])) if len(shape) > 1 else 1), "lnw": 0.3, "embed": 0.8,
                 "b": 0.15}[kind]
        v = (1.0 if kind == "lnw" else 0.0) + u * scale
        sd[name] = torch.from_numpy(v.astype(np.float32).reshape(shape)).to(torch.float64)
    return sd


def pixels():
    """The fixed input of the C++ test: value (c·7 + y·3 + x·5) mod 17 / 8 − 1 at [c, y, x]."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(224), np.arange(224), indexing="ij")
    return torch.from_numpy(((c * 7 + y * 3 + x * 5) % 17 / 8.0 - 1.0).astype(np.float32)).to(torch.float64)[None]


@torch.no_grad()
def forward(w, px, cfg):
    D, H, L, P, eps = (cfg[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "patch_size",
                                         "layer_norm_eps"))
    e = "embeddings."
    x = F.conv2d(px, w[e + "patch_embeddings.projection.weight"], w[e + "patch_embeddings.projection.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w[e + "cls_token"], x], dim=1) + w[e + "position_embeddings"]
    N, hd = x.shape[1], D // H
    for i in range(L):
        p = f"encoder.layer.{i}."
        h = F.layer_norm(x, (D,), w[p + "layernorm_before.weight"], w[p + "layernorm_before.bias"], eps)
        q, k, v = (F.linear(h, w[p + f"attention.attention.{m}.weight"], w[p + f"attention.attention.{m}.bias"])
                   .view(1, N, H, hd).transpose(1, 2) for m in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1)
        ctx = (a @ v).transpose(1, 2).reshape(1, N, D)
        x = x + F.linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
        h = F.layer_norm(x, (D,), w[p + "layernorm_after.weight"], w[p + "layernorm_after.bias"], eps)
        h = F.gelu(F.linear(h, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
        x = x + F.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
    return F.layer_norm(x, (D,), w["layernorm.weight"], w["layernorm.bias"], eps)[0]


def write_safetensors(path, tensors, metadata):
    header, data = {"__metadata__": metadata}, b""
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


out = forward(weights(CFG), pixels(), CFG)[ROWS].numpy().astype(np.float32)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "expected", "synthetic_tiny.safetensors")
write_safetensors(path, {"last_hidden_state_rows": out},
                  {"rows": json.dumps(ROWS), "made_by": "tests/tools/make_synthetic_fixture.py (float64 torch)"})
print(os.path.normpath(path), out.shape, float(np.abs(out).max()))
