"""Shared helpers of the Python tests: fixture paths, HF's fixture tensors, safetensors files built by
the tests (numpy only: the reader here is independent of the library under test).

ctest runs each test_*.py with PYTHONPATH=<build>/python (the module as built) and
VITMSN_TEST_DATA_DIR=tests/data; pytest's tmp_path gives every test its own folder.
"""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import vitmsn

DATA = Path(os.environ.get("VITMSN_TEST_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))
REPO = DATA.parent.parent

# The C++ golden tests' tolerance (tests/model_test.cpp): max abs error against HF's float64 outputs.
TOLERANCE = 1e-4

IMAGE_CASES = ["astronaut", "camera", "chelsea", "chelsea_q90", "coffee", "coffee_progressive", "green_palette",
               "horse", "rocket"]
PNG_CASES = ["astronaut", "camera", "chelsea", "coffee", "green_palette", "horse"]

def pytest_configure(config):
    # ctest gives each file its own --basetemp under <build>/test-tmp, which pytest creates without
    # its parents.
    if config.option.basetemp:
        Path(config.option.basetemp).parent.mkdir(parents=True, exist_ok=True)


_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def data(rel):
    return str(DATA / rel)


def read_safetensors(path):
    """{name: numpy array} and the metadata of a safetensors file (BF16 excluded: not needed here)."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = raw[8 + n:]
    out = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        out[name] = np.frombuffer(body[begin:end], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    return out, meta


def safetensors_bytes(header, data=b"", claimed_len=None):
    """A safetensors file: 8-byte little-endian header length, the header text, then `data`."""
    text = header if isinstance(header, bytes) else header.encode()
    return struct.pack("<Q", len(text) if claimed_len is None else claimed_len) + text + data


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: array} (or {name: (dtype_name, shape, bytes)}) as a safetensors file."""
    header, body = {}, b""
    for name, t in tensors.items():
        if isinstance(t, tuple):
            dtype, shape, raw = t
        else:
            dtype = {v: k for k, v in _DTYPES.items()}[t.dtype.type]
            shape, raw = list(t.shape), np.ascontiguousarray(t).tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    if metadata:
        header["__metadata__"] = metadata
    Path(path).write_bytes(safetensors_bytes(json.dumps(header), body))


_FIXTURES = {}


def _fixture_files():
    if not _FIXTURES:
        for i in range(3):
            tensors, _ = read_safetensors(data(f"expected/preprocess.{i}.safetensors"))
            _FIXTURES.update(tensors)
        _FIXTURES.update(read_safetensors(data("expected/tiny_outputs.safetensors"))[0])
    return _FIXTURES


def fixture(key):
    """A tensor of HF's fixtures: preprocess.{0,1,2} (pixel values, resized images) or tiny_outputs."""
    return _fixture_files()[key]


def pixels(case):
    """HF's pixel values [3, H, W] of a case (a writable C-contiguous float32 copy)."""
    return np.array(fixture(case + ".pixel_values"), dtype=np.float32)


def max_abs_error(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def expect_error(fn, *needles, prefix=None):
    """Runs fn, expects vitmsn.Error whose message holds every needle (and starts with prefix)."""
    with pytest.raises(vitmsn.Error) as info:
        fn()
    message = str(info.value)
    if prefix is not None:
        assert message.startswith(prefix), f"message does not start with {prefix!r}: {message}"
    for needle in needles:
        assert needle in message, f"message lacks {needle!r}: {message}"
    return message


@pytest.fixture(scope="session")
def tiny():
    return vitmsn.Model(data("models/tiny"))


@pytest.fixture(scope="session")
def tiny_cls():
    return vitmsn.Model(data("models/tiny-cls"))
