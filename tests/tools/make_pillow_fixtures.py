"""Generates tests/data/pillow/: small inputs and what Pillow makes of them, for the image and
preprocess tests (resize with all six filters, up and down; PNG colour types and bit depths that the
golden fixtures do not cover; small JPEGs with each chroma subsampling).

    /usr/bin/python3 tests/tools/make_pillow_fixtures.py tests/data/pillow

Needs numpy and Pillow (Debian: python3-numpy python3-pil). Pillow's 8-bit resampling code and its
PNG/JPEG conversions have not changed between 9.4 (Debian 12) and 12.3 (the golden fixtures), and
the golden fixtures' PNG cases are reproduced bit for bit by Debian's Pillow.

Outputs (all deterministic):
  resize.safetensors   resize.<input>.input U8 [H,W,3] and resize.<input>.<filter>.<W>x<H> U8 [h,w,3]:
                       Image.fromarray(input).resize((W, H), filter)
  convert.safetensors  convert.<file stem> U8 [H,W,3]: np.asarray(Image.open(file).convert("RGB"))
  *.png *.bmp *.gif *.jpg  the files converted
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image

FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (U8 tensors only, sorted by name)."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.uint8)
        header[name] = {"dtype": "U8", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# --- a PNG writer that controls colour type, bit depth, tRNS and interlacing exactly -----------------

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_rows(samples, depth):
    """samples: int array [h, w, c] -> scanlines with filter byte 0."""
    h, w, c = samples.shape
    out = bytearray()
    for y in range(h):
        out.append(0)
        row = samples[y].reshape(-1)
        if depth == 16:
            out += row.astype(">u2").tobytes()
        elif depth == 8:
            out += row.astype(np.uint8).tobytes()
        else:
            per_byte = 8 // depth
            padded = np.zeros(-(-row.size // per_byte) * per_byte, np.int64)
            padded[: row.size] = row
            for i in range(0, padded.size, per_byte):
                byte = 0
                for v in padded[i: i + per_byte]:
                    byte = (byte << depth) | int(v)
                out.append(byte)
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png(samples, depth, color_type, palette=None, trns=None, interlace=False):
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples[:, :, None]
    h, w, _ = samples.shape
    if interlace:
        raw = b"".join(_pack_rows(samples[y0::dy, x0::dx], depth)
                       for x0, y0, dx, dy in ADAM7 if samples[y0::dy, x0::dx].size)
    else:
        raw = _pack_rows(samples, depth)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        data += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        data += _chunk(b"tRNS", trns)
    return data + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    images = os.path.join(here, "..", "data", "images")
    rng = np.random.default_rng(20240611)

    # --- resize -------------------------------------------------------------------------------------
    chelsea = np.asarray(Image.open(os.path.join(images, "chelsea.png")).convert("RGB"))
    inputs = {
        # uniform noise: every filter overshoots, so the clamps and negative lobes are exercised
        "noise": (rng.integers(0, 256, (29, 37, 3)).astype(np.uint8),
                  [(17, 13), (61, 47), (50, 20), (37, 11), (20, 29), (5, 3), (1, 1)]),
        # a piece of a photograph
        "photo": (chelsea[100:164, 180:276].copy(), [(24, 16), (50, 33), (7, 5), (67, 45)]),
        # extreme upscale of a 3x2 image
        "tiny": (rng.integers(0, 256, (2, 3, 3)).astype(np.uint8), [(50, 40), (1, 7)]),
    }
    # a 3x6000 sliver: columns widened while rows shrink 125x (the case resize's intermediate limit
    # is about); drawn after the others so their inputs stay the same
    inputs["sliver"] = (rng.integers(0, 256, (6000, 3, 3)).astype(np.uint8), [(64, 48), (2, 4000)])
    resized = {}
    for name, (arr, sizes) in inputs.items():
        resized[f"resize.{name}.input"] = arr
        im = Image.fromarray(arr, "RGB")
        for code, fname in FILTERS.items():
            for w, h in sizes:
                resized[f"resize.{name}.{fname}.{w}x{h}"] = np.asarray(im.resize((w, h), resample=code))
    write_safetensors(os.path.join(out_dir, "resize.safetensors"), resized,
                      {"pillow": PIL.__version__, "what": "Image.fromarray(input).resize((W, H), filter)"})

    # --- conversions ----------------------------------------------------------------------------------
    files = {}
    h, w = 7, 11
    g16 = rng.integers(0, 65536, (h, w)).astype(np.int64)
    g16.flat[:16] = [0, 1, 2, 100, 254, 255, 256, 257, 511, 1000, 0x00FF, 0x0100, 0xFF00, 0xFFFF, 300, 128]
    a16 = rng.integers(0, 65536, (h, w))
    rgb16 = rng.integers(0, 65536, (h, w, 3))
    rgb16.flat[:6] = [0, 255, 256, 65535, 0x80FF, 0x7F00]
    rgb8 = rng.integers(0, 256, (h, w, 3))
    g8 = rng.integers(0, 256, (h, w))
    a8 = rng.integers(0, 256, (h, w))
    files["gray16.png"] = png(g16, 16, 0)
    files["gray16_trns.png"] = png(g16, 16, 0, trns=struct.pack(">H", int(g16[1, 1])))
    files["gray_alpha16.png"] = png(np.stack([g16, a16], -1), 16, 4)
    files["rgb16.png"] = png(rgb16, 16, 2)
    files["rgba16.png"] = png(np.concatenate([rgb16, a16[:, :, None]], -1), 16, 6)
    files["gray_alpha8.png"] = png(np.stack([g8, a8], -1), 8, 4)
    files["gray8_trns.png"] = png(g8, 8, 0, trns=struct.pack(">H", int(g8[0, 0])))
    files["gray1.png"] = png(rng.integers(0, 2, (h, w)), 1, 0)
    files["gray2.png"] = png(rng.integers(0, 4, (h, w)), 2, 0)
    files["gray4.png"] = png(rng.integers(0, 16, (h, w)), 4, 0)
    pal = rng.integers(0, 256, (16, 3))
    files["palette4.png"] = png(rng.integers(0, 16, (h, w)), 4, 3, palette=pal)
    pal8 = rng.integers(0, 256, (200, 3))
    files["palette8_trns.png"] = png(rng.integers(0, 200, (h, w)), 8, 3, palette=pal8,
                                     trns=bytes(rng.integers(0, 256, 50).astype(np.uint8)))
    files["rgb8_trns.png"] = png(rgb8, 8, 2, trns=struct.pack(">HHH", *[int(v) for v in rgb8[0, 0]]))
    files["rgb8_interlaced.png"] = png(rng.integers(0, 256, (13, 17, 3)), 8, 2, interlace=True)
    files["gray16_interlaced.png"] = png(rng.integers(0, 65536, (13, 17)), 16, 0, interlace=True)
    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)

    # Formats written by Pillow itself.
    photo = Image.fromarray(chelsea[60:188, 120:312].copy(), "RGB")  # 192x128
    Image.fromarray(rgb8.astype(np.uint8), "RGB").save(os.path.join(out_dir, "rgb.bmp"))
    Image.fromarray(rgb8.astype(np.uint8), "RGB").quantize(16).save(os.path.join(out_dir, "palette.gif"))
    jpegs = {
        "photo_420.jpg": dict(quality=90, subsampling=2),
        "photo_422.jpg": dict(quality=90, subsampling=1),
        "photo_444.jpg": dict(quality=90, subsampling=0),
    }
    for name, opts in jpegs.items():
        photo.save(os.path.join(out_dir, name), **opts)
    photo.convert("L").save(os.path.join(out_dir, "photo_gray.jpg"), quality=90)
    # odd sizes: partial MCUs at the right and bottom edges
    Image.fromarray(chelsea[7:64, 9:82].copy(), "RGB").save(os.path.join(out_dir, "odd_420.jpg"), quality=85)
    names = sorted(list(files) + ["rgb.bmp", "palette.gif", "photo_gray.jpg", "odd_420.jpg"] + list(jpegs))

    converted, modes = {}, {}
    for name in names:
        im = Image.open(os.path.join(out_dir, name))
        modes[name] = im.mode
        converted["convert." + os.path.splitext(name)[0]] = np.asarray(im.convert("RGB"))
    write_safetensors(os.path.join(out_dir, "convert.safetensors"), converted,
                      {"pillow": PIL.__version__, "modes": json.dumps(modes, sort_keys=True),
                       "what": 'np.asarray(Image.open(file).convert("RGB"))'})
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{len(resized)} resize tensors, {len(converted)} conversions, {total} bytes in {out_dir}")
    print(json.dumps(modes, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "pillow"))
