"""Minimal safetensors reading and writing with numpy, for the peers and the test tools (no
`safetensors` package needed). Little-endian F32/F64/F16/I64/I32/I8/U8 tensors."""
import json
import os
import struct

import numpy as np

_DT = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I8": np.int8,
       "U8": np.uint8}
_DT_NAME = {np.dtype(v): k for k, v in _DT.items()}


def read_safetensors(path):
    """(tensors by name, __metadata__): the tensors are copies (the file is not kept open)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    n = struct.unpack("<Q", raw[:8].tobytes())[0]
    header = json.loads(raw[8:8 + n].tobytes())
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, v in header.items():
        if v["dtype"] not in _DT:
            raise ValueError(f"{path}: tensor {name} has dtype {v['dtype']}, not one of {sorted(_DT)}")
        a, b = v["data_offsets"]
        out[name] = np.array(raw[8 + n + a:8 + n + b].view(_DT[v["dtype"]]).reshape(v["shape"]))
    del raw
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes `tensors` (name -> array) in name order, atomically (temporary file, then rename)."""
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in sorted(tensors)}
    for name, a in arrays.items():
        header[name] = {"dtype": _DT_NAME[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)
