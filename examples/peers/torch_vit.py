"""Plain PyTorch ViT-MSN encoder forward (same ops as HF's eager ViTMSNModel): the PyTorch peer of the
benchmarks (peer_torch.py), the graph exported to ONNX (export_onnx.py) and, in float64, the reference
of the full-size tests (tests/tools/fullsize_reference.py).

Works on torch 1.13 (Debian) and 2.x. Weights: a dict of numpy arrays with HF key names (no prefix).
"""
import math

import torch
import torch.nn.functional as F


def to_torch(sd, dtype=torch.float32, device="cpu"):
    return {k: torch.from_numpy(v).to(device=device, dtype=dtype) for k, v in sd.items()}


@torch.no_grad()
def forward(w, pixel_values, cfg):
    """pixel_values: [B,3,H,W] -> last_hidden_state [B,N,D] (HF ViTMSNModel, no position interpolation)."""
    D, H, L, P = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["patch_size"]
    eps = cfg.get("layer_norm_eps", 1e-6)
    e = "embeddings."
    x = F.conv2d(pixel_values, w[e + "patch_embeddings.projection.weight"], w[e + "patch_embeddings.projection.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([w[e + "cls_token"].expand(B, -1, -1), x], dim=1) + w[e + "position_embeddings"]
    N, hd = x.shape[1], D // H
    for i in range(L):
        p = f"encoder.layer.{i}."
        h = F.layer_norm(x, (D,), w[p + "layernorm_before.weight"], w[p + "layernorm_before.bias"], eps)
        q = F.linear(h, w[p + "attention.attention.query.weight"], w[p + "attention.attention.query.bias"])
        k = F.linear(h, w[p + "attention.attention.key.weight"], w[p + "attention.attention.key.bias"])
        v = F.linear(h, w[p + "attention.attention.value.weight"], w[p + "attention.attention.value.bias"])
        q, k, v = (t.view(B, N, H, hd).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        ctx = (a @ v).transpose(1, 2).reshape(B, N, D)
        x = x + F.linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
        h = F.layer_norm(x, (D,), w[p + "layernorm_after.weight"], w[p + "layernorm_after.bias"], eps)
        h = F.gelu(F.linear(h, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
        x = x + F.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
    return F.layer_norm(x, (D,), w["layernorm.weight"], w["layernorm.bias"], eps)
