"""Every kind of input gives the same features: a path, a PIL image, a numpy uint8 array, pixel values
in any float layout; embed() and the Preprocessor agree with extract_features()."""

import pathlib

import numpy as np
import pytest
from PIL import Image

import vitmsn
from conftest import PNG_CASES, data, pixels


@pytest.mark.parametrize("case", PNG_CASES)  # RGB, L (camera), RGBA (horse), P (green_palette)
def test_path_pil_image_and_uint8_array_give_identical_features(tiny, case):
    path = data(f"images/{case}.png")
    by_path = tiny.extract_features(path).last_hidden_state
    with Image.open(path) as im:
        im.load()
        by_pil = tiny.extract_features(im).last_hidden_state
        rgb = np.asarray(im.convert("RGB"))
    by_array = tiny.extract_features(rgb).last_hidden_state
    assert np.array_equal(by_path, by_pil), "PIL image"
    assert np.array_equal(by_path, by_array), "uint8 array"
    assert np.array_equal(by_path, tiny.extract_features(pathlib.Path(path)).last_hidden_state), "pathlib.Path"
    assert np.array_equal(by_path, tiny.extract_features(path.encode()).last_hidden_state), "bytes path"


def test_gray_array_is_replicated_into_rgb_as_pillow_does(tiny):
    with Image.open(data("images/camera.png")) as im:
        gray = np.asarray(im.convert("L"))
    assert gray.ndim == 2
    assert np.array_equal(tiny.extract_features(gray).last_hidden_state,
                          tiny.extract_features(np.stack([gray] * 3, axis=-1)).last_hidden_state)


def test_a_strided_uint8_view_equals_its_contiguous_copy(tiny):
    rgb = np.asarray(Image.open(data("images/chelsea.png")).convert("RGB"))
    flipped = rgb[::-1, ::2]  # negative and doubled strides
    assert not flipped.flags.c_contiguous
    assert np.array_equal(tiny.extract_features(flipped).last_hidden_state,
                          tiny.extract_features(np.ascontiguousarray(flipped)).last_hidden_state)


def test_pixel_values_in_other_layouts_and_dtypes_are_converted_to_the_same_result(tiny):
    px = pixels("chelsea")
    want = tiny.extract_features(px).last_hidden_state
    fortran = np.asfortranarray(px)
    padded = np.zeros((3, 224, 448), np.float32)
    padded[:, :, ::2] = px
    for name, x in [("float64", px.astype(np.float64)), ("big-endian", px.astype(">f4")),
                    ("Fortran order", fortran), ("strided view", padded[:, :, ::2])]:
        assert np.array_equal(tiny.extract_features(x).last_hidden_state, want), name
    # float16 is converted too (values rounded to half precision first, so only close).
    assert np.abs(tiny.extract_features(px.astype(np.float16)).last_hidden_state - want).max() < 0.05


def test_model_call_accepts_anything_numpy_can_view_as_an_array(tiny):
    batch = pixels("coffee")[None]
    want = tiny(batch)
    assert np.array_equal(tiny(memoryview(batch)), want)
    assert np.array_equal(tiny(batch.astype(np.float64)), want)


def test_embed_pools_as_features_do_for_every_kind_of_input(tiny):
    paths = [data(f"images/{c}.png") for c in ("chelsea", "camera", "horse")]
    feats = [tiny.extract_features(p) for p in paths]
    cls = tiny.embed(paths)
    assert cls.shape == (3, 64) and cls.dtype == np.float32
    for i, f in enumerate(feats):
        assert np.array_equal(cls[i], f.cls)
    mean = tiny.embed(paths, pool="mean", batch_size=2)
    for i, f in enumerate(feats):
        assert np.array_equal(mean[i], f.mean_patch)
    mixed = [paths[0], Image.open(paths[1]), np.asarray(Image.open(paths[2]).convert("RGB")),
             vitmsn.Preprocessor(tiny)(paths[0])]
    out = tiny.embed(iter(mixed), batch_size=3)
    assert np.array_equal(out[:3], cls) and np.array_equal(out[3], cls[0])
    assert tiny.embed([]).shape == (0, 64)


def test_embed_with_a_size_equals_extract_features_with_that_size(tiny):
    f = tiny.extract_features(data("images/chelsea.png"), size=(224, 336))
    assert np.array_equal(tiny.embed([data("images/chelsea.png")], size=(224, 336))[0], f.cls)


def test_embed_progress_prints_lines_when_not_on_a_terminal(tiny, capsys):
    tiny.embed([data("images/chelsea.png")] * 4, progress=True, batch_size=2)
    err = capsys.readouterr().err
    assert "2/4 images" in err and "4/4 images" in err, err


def test_preprocessor_from_a_model_a_file_and_defaults_agree(tiny, tmp_path):
    from_model = vitmsn.Preprocessor(tiny)
    from_file = vitmsn.Preprocessor(data("models/tiny/preprocessor_config.json"))
    defaults = vitmsn.Preprocessor()
    assert from_model.config == from_file.config == defaults.config
    x = data("images/horse.png")
    assert np.array_equal(from_model(x), from_file(x)) and np.array_equal(from_model(x), defaults(x))
    with Image.open(x) as im:
        assert np.array_equal(from_model(im), from_model(x))
    # Its pixel values are what the model runs on images.
    assert np.array_equal(tiny.extract_features(from_model(x)).last_hidden_state,
                          tiny.extract_features(x).last_hidden_state)
    assert from_model(x, size=(56, 70)).shape == (3, 56, 70)
    assert from_model.resize(x, size=35).shape == (35, 35, 3)
    # A config with other settings: bicubic and a shortest edge.
    cfg = tmp_path / "preprocessor_config.json"
    cfg.write_text('{"size": {"shortest_edge": 112}, "resample": 3}')
    pre = vitmsn.Preprocessor(cfg)
    assert pre.config["resample"] == 3 and pre(data("images/chelsea.png")).shape == (3, 112, 168)
