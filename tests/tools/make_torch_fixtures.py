"""Writes the torch checkpoint and DEFLATE fixtures of tests/torch_checkpoint_test.cpp into tests/data/torch/.

    /usr/bin/python3 tests/tools/make_torch_fixtures.py tests/data/torch

Needs PyTorch (Debian's python3-torch 1.13 made the committed files); numpy is not needed. Every
checkpoint `<name>.pt` comes with `<name>.expected.safetensors`: the tensors the reader must return,
made contiguous, same names, same dtype, in checkpoint order (the writer below keeps the order in the
header; vitmsn reads names back sorted by offset, which is that order).
"""
import collections
import io
import json
import os
import pickletools
import random
import struct
import sys
import zipfile
import zlib

import torch

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def tensor_bytes(t):
    t = t.detach().contiguous()
    # Raw storage bytes via a uint8 view: works for bf16 too, which numpy cannot hold.
    return bytes(t.reshape(-1).view(torch.uint8).tolist()) if t.numel() else b""


def write_safetensors(path, tensors):
    """Minimal safetensors writer (tensors in the given order; header padded to 8 bytes)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def flatten_expected(sd, prefix=""):
    out = collections.OrderedDict()
    for k, v in sd.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, torch.Tensor):
            out[name] = v
        elif isinstance(v, dict):
            out.update(flatten_expected(v, name))
    return out


def views_state_dict():
    """An OrderedDict state dict (with `_metadata`, so the pickle ends in BUILD) of awkward views."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)  # Linear initialises from the global generator
    lin = torch.nn.Linear(6, 4)
    sd = lin.state_dict()  # weight [4,6], bias [4]: plain contiguous tensors

    # q/k/v as slices of one fused [3*8, 6] weight and [3*8] bias (offsets 0, 48, 96 / 0, 8, 16).
    fused_w = torch.randn(24, 6, generator=g)
    fused_b = torch.randn(24, generator=g)
    for i, n in enumerate(["query", "key", "value"]):
        sd[f"attention.{n}.weight"] = fused_w[8 * i:8 * (i + 1)]
        sd[f"attention.{n}.bias"] = fused_b[8 * i:8 * (i + 1)]
    # Column slice: offset 2, rows not contiguous (stride [6,1] over a [24,6] storage).
    sd["column_slice"] = fused_w[3:7, 2:5]
    sd["transposed"] = torch.randn(5, 3, generator=g).t()  # stride [1,3]
    base = torch.randn(4, 6, 5, generator=g)
    sd["permuted_stepped"] = base[1:, ::2, :].permute(2, 0, 1)  # offset 30, strides [1,30,10]
    sd["expanded"] = torch.randn(3, generator=g).expand(4, 3)  # stride [0,1]
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["half"] = torch.randn(3, 5, generator=g).half()
    sd["half_transposed"] = torch.randn(4, 2, generator=g).half().t()
    sd["bfloat16"] = torch.randn(2, 7, generator=g).bfloat16()
    sd["double"] = torch.randn(3, generator=g).double()
    sd["int64"] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)[:, 1:]
    sd["int32"] = torch.tensor([-(2 ** 31), 2 ** 31 - 1, 5], dtype=torch.int32)
    sd["int16"] = torch.tensor([-300, 7], dtype=torch.int16)
    sd["int8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["tied"] = sd["weight"]  # the same tensor under a second key
    sd["parameter"] = torch.nn.Parameter(torch.randn(2, 3, generator=g).t())  # _rebuild_parameter
    return sd


def rezip(src, dst, compression, force_zip64=False):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression, compresslevel=9) as zout:
        for info in zin.infolist():
            out_info = zipfile.ZipInfo(info.filename, info.date_time)
            out_info.compress_type = compression  # a ZipInfo does not inherit the archive's method
            with zout.open(out_info, "w", force_zip64=force_zip64) as f:
                f.write(zin.read(info.filename))


def torch_like_zip(path, pickle_bytes):
    """A zip laid out like torch.save's (archive/data.pkl, byteorder, version), holding no storage."""
    entries = [("archive/data.pkl", pickle_bytes), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)  # fixed time: stable bytes


def malicious_pickles():
    # Protocol 2: GLOBAL 'os system' called with a shell command (what a booby-trapped
    # pytorch_model.bin does; pickle.loads would run it).
    os_system = (b"\x80\x02" + b"cos\nsystem\n" + b"X\x17\x00\x00\x00echo pwned > /tmp/pwned"
                 + b"\x85" + b"R" + b".")
    # Protocol 4: STACK_GLOBAL builtins.eval inside an otherwise ordinary-looking dict.
    body = (b"}\x94" + b"\x8c\x01w\x94" + b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94"
            + b"\x8c\x14__import__('os').sep\x94\x85\x94R\x94" + b"s.")
    eval_ = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    return {"malicious_os_system.pt": os_system, "malicious_eval.pt": eval_}


def deflate_streams(out_dir):
    """Raw DEFLATE streams (no zlib header) from zlib itself, one per block kind, plus a manifest."""
    rnd = random.Random(1951)
    words = [w.encode() for w in "vision transformer masked siamese network patch token query key "
             "value attention layer norm gelu head embedding position class pixel".split()]
    text = bytearray()
    while len(text) < 60000:
        r = rnd.random()
        if r < 0.9:
            text += rnd.choice(words) + b" "
        elif r < 0.95:
            text += bytes([rnd.randrange(256)]) * rnd.randrange(3, 400)  # runs: overlapping copies
        else:
            text += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))
    text = bytes(text)
    small = text[:5000]

    def raw(data, level=9, strategy=zlib.Z_DEFAULT_STRATEGY, mem_level=8, chunks=1):
        c = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy)
        step = max(1, (len(data) + chunks - 1) // chunks)
        out = b""
        for i in range(0, len(data), step):
            out += c.compress(data[i:i + step])
            if chunks > 1:
                out += c.flush(zlib.Z_SYNC_FLUSH)  # an empty stored block between dynamic blocks
        return out + c.flush()

    streams = {
        # memLevel 1 makes zlib cut stored blocks at a few hundred bytes: many stored blocks.
        "stored": (small, raw(small, level=0, mem_level=1)),
        "fixed": (text, raw(text, strategy=zlib.Z_FIXED)),
        "dynamic": (text, raw(text)),
        "rle": (text, raw(text, strategy=zlib.Z_RLE)),
        "huffman_only": (small, raw(small, strategy=zlib.Z_HUFFMAN_ONLY)),
        "multi": (text, raw(text, chunks=5)),
        "empty": (b"", raw(b"")),
    }
    os.makedirs(out_dir, exist_ok=True)
    lines = ["# name uncompressed_size crc32_hex (of the uncompressed data; zlib's values)"]
    for name, (data, comp) in streams.items():
        assert zlib.decompress(comp, -15) == data
        with open(os.path.join(out_dir, name + ".deflate"), "wb") as f:
            f.write(comp)
        lines.append(f"{name} {len(data)} {zlib.crc32(data):08x}")
    with open(os.path.join(out_dir, "streams.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(out):
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)  # noqa: E731

    sd = views_state_dict()
    torch.save(sd, p("views.pt"))
    write_safetensors(p("views.expected.safetensors"), flatten_expected(sd))
    torch.save(sd, p("views_proto4.pt"), pickle_protocol=4)
    rezip(p("views.pt"), p("views_deflated.pt"), zipfile.ZIP_DEFLATED)
    rezip(p("views.pt"), p("views_zip64.pt"), zipfile.ZIP_STORED, force_zip64=True)

    g = torch.Generator().manual_seed(11)
    model = collections.OrderedDict(w=torch.randn(2, 3, generator=g), b=torch.randn(2, generator=g))
    # A training checkpoint: the reader picks "model" and ignores the rest.
    torch.save({"epoch": 3, "model": model, "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}}},
               p("wrapped.pt"))
    write_safetensors(p("wrapped.expected.safetensors"), flatten_expected(model))
    # No wrapper key: nested dicts are flattened with '.'; non-tensor values are skipped.
    nested = {"encoder": {"layer": {0: {"w": torch.randn(2, 2, generator=g)}}},
              "head": model, "step": 5, "names": ["a", "b"]}
    torch.save(nested, p("nested.pt"))
    write_safetensors(p("nested.expected.safetensors"), flatten_expected(nested))

    torch.save(model, p("legacy.pt"), _use_new_zipfile_serialization=False)
    for name, data in malicious_pickles().items():
        pickletools.dis(data, io.StringIO())  # well-formed pickles (checked, not run)
        torch_like_zip(p(name), data)
    deflate_streams(p("deflate"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "torch"))
