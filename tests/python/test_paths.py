"""Path arguments as Python gives them (os.fsencode semantics: non-UTF-8 names, bytes, os.PathLike),
bytes that are not paths, empty paths, and PIL images that fail to load (Pillow's own error)."""

import os
import pathlib
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import vitmsn
from conftest import DATA, data

needs_utf8_fs = pytest.mark.skipif(sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"),
                                   reason="the names below are non-UTF-8 bytes under a UTF-8 filesystem encoding")


@needs_utf8_fs
def test_non_utf8_file_names_work_as_str_bytes_and_pathlike_everywhere(tiny, tmp_path):
    src = data("images/chelsea.png")
    want = tiny.extract_features(src).last_hidden_state
    os.makedirs(os.fsencode(tmp_path) + b"/imgs")
    shutil.copyfile(src, os.fsencode(tmp_path) + b"/imgs/caf\xe9.png")
    (name,) = os.listdir(tmp_path / "imgs")
    assert name == "caf\udce9.png"  # what os.listdir() gives for the byte 0xe9
    path = str(tmp_path / "imgs" / name)
    for x in (path, os.fsencode(path), pathlib.Path(path)):
        assert np.array_equal(tiny.extract_features(x).last_hidden_state, want), repr(x)
    assert np.array_equal(tiny.embed([path, os.fsencode(path)]), np.stack([want[0], want[0]]))
    assert np.array_equal(tiny.preprocessor(path), tiny.preprocessor(src))
    assert np.array_equal(tiny.preprocessor.resize(os.fsencode(path)), tiny.preprocessor.resize(src))

    folder = os.fsencode(tmp_path) + b"/mod\xe8le"
    shutil.copytree(os.fsencode(DATA / "models/tiny"), folder)
    model = vitmsn.Model(os.fsdecode(folder))
    assert model.source == os.path.join(os.fsdecode(folder), "model.safetensors")
    assert "mod\\udce8le" in repr(model)
    assert np.array_equal(model.extract_features(path).last_hidden_state, want)
    assert np.array_equal(vitmsn.Model(folder).extract_features(src).last_hidden_state, want)
    pre = vitmsn.Preprocessor(os.fsdecode(folder) + "/preprocessor_config.json")
    assert pre.config == tiny.preprocessor.config

    # An error about such a file names it as os.fsdecode does.
    missing = os.fsdecode(folder) + "/caf\udce9-missing.png"
    with pytest.raises(vitmsn.NotFoundError) as info:
        tiny.extract_features(missing)
    assert info.value.path == missing


def test_image_file_contents_passed_as_bytes_are_a_type_error_saying_what_to_pass(tiny):
    raw = pathlib.Path(data("images/chelsea.png")).read_bytes()
    for f in (tiny.extract_features, tiny.preprocessor, tiny.preprocessor.resize):
        with pytest.raises(TypeError, match="not a file name.*pass a path.*PIL image"):
            f(raw)
    with pytest.raises(TypeError, match="not a file name"):
        tiny.embed([raw])


def test_an_empty_path_says_empty_path(tiny):
    for x in ("", b""):
        with pytest.raises(vitmsn.ArgumentError, match="empty path"):
            tiny.extract_features(x)
        with pytest.raises(vitmsn.ArgumentError, match="empty path"):
            vitmsn.Model(x)


def test_a_pil_image_that_fails_to_load_raises_pillows_own_error(tiny, tmp_path):
    # A JPEG cut short: Pillow opens it lazily and fails in load() with its own OSError.
    raw = pathlib.Path(data("images/chelsea_q90.jpg")).read_bytes()
    cut = tmp_path / "trunc.jpg"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OSError, match="truncated"):
        tiny.extract_features(Image.open(cut))
    with pytest.raises(OSError, match="truncated"):
        tiny.preprocessor(Image.open(cut))
    # A closed image: Pillow's error too, not "expected ... got JpegImageFile".
    im = Image.open(data("images/chelsea_q90.jpg"))
    im.close()
    with pytest.raises(Exception) as info:
        tiny.extract_features(im)
    assert not isinstance(info.value, TypeError), info.value
    assert "expected" not in str(info.value)
