"""examples/python/few_shot.py end to end on the tiny model: a generated 3-class folder (the images of
the C++ vitmsn-probe test: blue checks, green stripes, red disks), features with model.embed,
scikit-learn's cross-validated accuracy printed."""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO, data

CLASSES = ["blue_checks", "green_stripes", "red_disk"]
EXAMPLE = REPO / "examples/python/few_shot.py"


def picture(c, i):
    """A 40x40 picture of class c, varied by i (phase, position, size, noise): as tests/probe_test.cpp."""
    rng = np.random.default_rng(100 * c + i)
    y, x = np.mgrid[0:40, 0:40]
    if c == 0:
        on = ((x + i) // 5 + (y + 2 * i) // 5) % 2 == 0
        rgb = np.where(on[..., None], [30, 30, 220], [230, 230, 240])
    elif c == 1:
        on = ((y + i) // 4) % 2 == 0
        rgb = np.where(on[..., None], [20, 190, 30], [200, 250, 200])
    else:
        inside = (x - 16 - i) ** 2 + (y - 22 + i) ** 2 <= (9 + i % 4) ** 2
        rgb = np.where(inside[..., None], [230, 25, 30], [50, 50, 55])
    noise = rng.integers(-12, 13, size=(40, 40, 1))
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def make_image_folder(root):
    for c, name in enumerate(CLASSES):
        os.makedirs(root / name / "sub")
        for i in range(6):
            Image.fromarray(picture(c, i)).save(root / name / ("sub" if i >= 4 else ".") / f"{i}.png")
    (root / "red_disk" / ".hidden.png").write_bytes(b"not an image, and hidden: skipped")
    (root / "notes.txt").write_text("outside the class folders: ignored")
    return root


def run(*args):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_few_shot_example_prints_cross_validated_accuracy_on_the_tiny_model(tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    r = run("--model", data("models/tiny"), "--data", str(folder))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    print(out)
    assert f"18 images in 3 classes under {folder}" in out
    assert "features: 18 x 64" in out
    assert "cross-validation (5-fold stratified, seed 0)" in out
    for name in CLASSES:
        assert re.search(rf"{name}\s+6\s+\d+\.\d%", out), name
    overall = float(re.search(r"overall\s+18\s+(\d+\.\d)%", out).group(1))
    assert overall >= 90.0, out  # the C++ probe gets 100 % on these pictures with the tiny model


def test_few_shot_example_reports_errors_in_words(tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    (folder / "red_disk" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = run("--model", data("models/tiny"), "--data", str(folder))
    assert r.returncode == 1 and f"error: {folder}/red_disk/broken.png" in r.stderr, r.stderr
    r = run("--model", data("images/chelsea.png"), "--data", str(folder))
    assert r.returncode == 1 and "a PNG image, not a model" in r.stderr, r.stderr
