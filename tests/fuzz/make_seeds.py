#!/usr/bin/env python3
"""Crafts small seed inputs for the fuzz targets (python3 standard library only).

    make_seeds.py OUT_DIR

writes OUT_DIR/{safetensors,json,image,torch,npy}/seed-*: valid inputs that reach the branches the
committed fixtures under tests/data do not (every safetensors dtype, scalar and empty tensors, the
image formats besides PNG/JPEG, hand-written pickles with the less common globals and opcodes).
run_fuzzers.sh adds the fixtures themselves.
"""
import json
import os
import struct
import sys
import zipfile
import zlib


def write(out_dir, target, name, data):
    folder = os.path.join(out_dir, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


# --- safetensors ---------------------------------------------------------------------------------

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes) in data order."""
    header, offset, blob = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def safetensors_seeds(out):
    for dtype, size in DTYPES.items():
        raw = bytes((17 * i + 3) & 0xFF for i in range(6 * size))
        write(out, "safetensors", dtype.lower(), safetensors([("t", dtype, [2, 3], raw)]))
    write(out, "safetensors", "scalar", safetensors([("s", "F32", [], struct.pack("<f", 1.5))]))
    write(out, "safetensors", "empty", safetensors([("e", "F16", [0, 4], b""), ("x", "U8", [1], b"\x07")]))
    write(out, "safetensors", "metadata",
          safetensors([("a.weight", "F32", [1, 2], struct.pack("<2f", -1.0, 2.0))],
                      {"format": "pt", "config": "{\"hidden_size\": 64}"}))
    write(out, "safetensors", "unpadded",
          safetensors([("b", "BF16", [3], b"\x80\x3f\x00\x40\xc0\x7f"), ("a", "I64", [1], struct.pack("<q", -5))],
                      pad=False))
    write(out, "safetensors", "nothing", safetensors([]))


# --- JSON ----------------------------------------------------------------------------------------

def json_seeds(out):
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
            "patch_size": 7}
    write(out, "json", "config-minimal", json.dumps(base))
    write(out, "json", "config-full", json.dumps(dict(base, image_size=28, num_channels=3, layer_norm_eps=1e-12,
                                                      qkv_bias=False, hidden_act="gelu", model_type="vit_msn",
                                                      id2label={"1": "dog", "0": "cat"})))
    write(out, "json", "preprocessor-shortest-edge",
          json.dumps({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224, "resample": 3,
                      "image_mean": 0.5, "image_std": [0.5], "rescale_factor": 0.5, "do_convert_rgb": None}))
    write(out, "json", "preprocessor-crop",
          json.dumps({"size": 32, "crop_size": {"height": 30, "width": 20}, "do_center_crop": True, "resample": 0,
                      "do_normalize": False, "do_rescale": False, "do_resize": True}))


# --- images --------------------------------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, depth, colour, rows, extra=b""):
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)) +
            extra + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def gif_lzw(indices, min_code_size):
    """GIF's variable-width LZW (codes LSB first), starting with a clear code."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    table = {(i,): i for i in range(clear)}
    next_code, width = end + 1, min_code_size + 1
    codes = [(clear, width)]
    current = ()
    for index in indices:
        candidate = current + (index,)
        if candidate in table:
            current = candidate
            continue
        codes.append((table[current], width))
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
        current = (index,)
    codes.append((table[current], width))
    codes.append((end, width))
    bits, count, out = 0, 0, bytearray()
    for code, w in codes:
        bits |= code << count
        count += w
        while count >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            count -= 8
    if count:
        out.append(bits & 0xFF)
    return bytes(out)


def image_seeds(out):
    w, h = 3, 2
    rgb = bytes((40 * i + 7) & 0xFF for i in range(w * h * 3))
    write(out, "image", "p6.ppm", b"P6\n3 2\n255\n" + rgb)
    write(out, "image", "p5-16bit.pgm", b"P5\n3 2\n65535\n" + bytes(range(12)))
    # TGA: uncompressed true colour (type 2) and run-length encoded (type 10), 24 bits, bottom-up.
    write(out, "image", "rgb.tga", struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, 24, 0) + rgb)
    rle = b"\x82" + rgb[:3] + b"\x02" + rgb[3:12]
    write(out, "image", "rle.tga", struct.pack("<BBBHHBHHHHBB", 0, 0, 10, 0, 0, 0, 0, 0, w, h, 24, 0) + rle)
    # BMP, 32 bits per pixel, BITFIELDS with a BITMAPV4-sized header.
    pixels = b"".join(rgb[i:i + 3] + b"\xff" for i in range(0, len(rgb), 3))
    info = struct.pack("<IiiHHIIiiII", 108, w, h, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    info += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"\x00" * (108 - 56)
    write(out, "image", "argb.bmp", b"BM" + struct.pack("<IHHI", 14 + 108 + len(pixels), 0, 0, 14 + 108) + info + pixels)
    # Photoshop: 3 channels, 8 bits, RGB mode, raw (uncompressed) planes.
    psd = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0) + b"\x00\x00"
    write(out, "image", "rgb.psd", psd + bytes(range(w * h * 3)))
    # GIF89a, 2x2, global 4-colour palette, one LZW-coded frame.
    lzw = gif_lzw([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1], 2)
    gif = (b"GIF89a" + struct.pack("<HHBBB", 4, 3, 0x81, 0, 0) + bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]) +
           b"\x2c" + struct.pack("<HHHHB", 0, 0, 4, 3, 0) + b"\x02" + bytes([len(lzw)]) + lzw + b"\x00\x3b")
    write(out, "image", "tiny.gif", gif)
    # PNGs the fixtures lack: 1-bit palette with tRNS, 16-bit gray+alpha, Adam7 palette.
    plte = png_chunk(b"PLTE", bytes([255, 0, 0, 0, 0, 255]))
    trns = png_chunk(b"tRNS", b"\x80")
    write(out, "image", "palette1-trns.png", png(8, 2, 1, 3, [b"\xa5", b"\x5a"], plte + trns))
    write(out, "image", "gray-alpha16.png", png(1, 2, 16, 4, [b"\x12\x34\xff\xff", b"\xab\xcd\x00\x00"]))


# --- torch.save checkpoints ----------------------------------------------------------------------

class Pickle:
    """Writes pickle opcodes by hand (the globals involved cannot be imported without PyTorch)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.memo = 0

    def op(self, raw):
        self.out += raw

    def string(self, s):
        b = s.encode()
        self.op(b"X" + struct.pack("<I", len(b)) + b)

    def int(self, v):
        self.op(b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    def put(self):
        self.op(b"q" + bytes([self.memo]))
        self.memo += 1
        return self.memo - 1

    def glob(self, module, name):
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def tuple(self, items):
        self.op(b"(")
        for item in items:
            item()
        self.op(b"t")

    def storage(self, storage_type, key, numel):
        self.tuple([lambda: self.string("storage"), lambda: self.glob("torch", storage_type),
                    lambda: self.string(key), lambda: self.string("cpu"), lambda: self.int(numel)])
        self.op(b"Q")

    def tensor(self, storage_type, key, numel, offset, size, stride, v2=True):
        self.glob("torch._utils", "_rebuild_tensor_v2" if v2 else "_rebuild_tensor")
        parts = [lambda: self.storage(storage_type, key, numel), lambda: self.int(offset),
                 lambda: self.tuple([(lambda d=d: self.int(d)) for d in size]),
                 lambda: self.tuple([(lambda s=s: self.int(s)) for s in stride])]
        if v2:
            parts += [lambda: self.op(b"\x89"), lambda: (self.glob("collections", "OrderedDict"), self.op(b")R"))]
        self.tuple(parts)
        self.op(b"R")

    def stop(self):
        self.op(b".")
        return bytes(self.out)


def checkpoint(pickle_bytes, storages, method=zipfile.ZIP_STORED, archive="archive"):
    from io import BytesIO
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        z.writestr(archive + "/data.pkl", pickle_bytes)
        z.writestr(archive + "/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(archive + "/data/" + key, raw)
        z.writestr(archive + "/version", "3\n")
    return buf.getvalue()


def torch_seeds(out):
    floats = struct.pack("<6f", *range(6))
    # OrderedDict state dict: a transposed view, a parameter over a shared storage, a bool scalar,
    # a nested dict with an int key, a v1 _rebuild_tensor.
    p = Pickle()
    p.glob("collections", "OrderedDict")
    p.op(b")R")
    p.put()
    p.op(b"(")
    p.string("w.t")
    p.tensor("FloatStorage", "0", 6, 0, [3, 2], [1, 3])
    p.string("param")
    p.glob("torch._utils", "_rebuild_parameter")
    p.tuple([lambda: p.tensor("FloatStorage", "0", 6, 2, [2], [2]), lambda: p.op(b"\x88"),
             lambda: (p.glob("collections", "OrderedDict"), p.op(b")R"))])
    p.op(b"R")
    p.string("flag")
    p.tensor("BoolStorage", "1", 1, 0, [], [])
    p.string("sub")
    p.op(b"}")
    p.int(7)
    p.tensor("HalfStorage", "2", 2, 0, [2], [1], v2=False)
    p.op(b"s")
    p.string("epoch")
    p.int(3)
    p.op(b"u")
    write(out, "torch", "views.pt",
          checkpoint(p.stop(), {"0": floats, "1": b"\x01", "2": b"\x00\x3c\x00\xc0"}))
    # Deflated entries, wrapped in {"state_dict": ...}, stride-0 expansion.
    p = Pickle()
    p.op(b"}(")
    p.string("state_dict")
    p.op(b"}(")
    p.string("x")
    p.tensor("LongStorage", "a", 1, 0, [4, 2], [0, 0])
    p.op(b"u")
    p.string("optimizer")
    p.op(b"N")
    p.op(b"u")
    write(out, "torch", "wrapped-deflated.pt",
          checkpoint(p.stop(), {"a": struct.pack("<q", 42)}, method=zipfile.ZIP_DEFLATED, archive="ckpt"))


# --- .npy -----------------------------------------------------------------------------------------

def npy(header, data, version=1):
    prefix = 10 if version == 1 else 12
    header += " " * ((64 - (prefix + len(header) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + data


def npy_seeds(out):
    f = lambda n: struct.pack("<%df" % n, *[0.5 * i for i in range(n)])
    write(out, "npy", "2x3.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f(6)))
    write(out, "npy", "scalar.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f(1)))
    write(out, "npy", "empty.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", b""))
    write(out, "npy", "v2-quotes.npy", npy('{"descr": "<f4", "fortran_order": False, "shape": (4,)}', f(4), 2))
    write(out, "npy", "v3-longs.npy", npy("{'shape': (1L, 2L), 'fortran_order': False, 'descr': '<f4'}", f(2), 3))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_seeds.py OUT_DIR")
    out = sys.argv[1]
    safetensors_seeds(out)
    json_seeds(out)
    image_seeds(out)
    torch_seeds(out)
    npy_seeds(out)


if __name__ == "__main__":
    main()
