"""Hostile models, images and arrays: the hostile inputs of the C++ tests (safetensors_test,
model_load_test, image_test, fuzz_regression_test, model_test), made again here, each raise
vitmsn.Error with the text the C++ tests expect; never a crash, never another exception."""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

import vitmsn
from conftest import data, expect_error, pixels, read_safetensors, safetensors_bytes, write_safetensors

F8 = bytes(8)  # two float32 zeros


def test_error_is_a_value_error_with_the_library_message():
    assert issubclass(vitmsn.Error, ValueError)
    with pytest.raises(ValueError, match="no model.safetensors in this folder"):
        vitmsn.Model(data("models"))


# --- safetensors headers (tests/safetensors_test.cpp), loaded as a model ---------------------------------

HEADERS = {
    "truncated": (b"\x10\x00\x00", ["shorter than the 8-byte header length"]),
    "header_past_end": (safetensors_bytes("{}", b"", 4096), ["runs past the end of the file"]),
    "huge_header": (safetensors_bytes("{}", b"", 1 << 62), ["exceeds the limit"]),
    "bad_json": (safetensors_bytes('{"x": [1,2'), ["not valid JSON", "the text ends before the JSON is complete"]),
    "latin1": (safetensors_bytes(b'{"caf\xe9": 1}'),
               ["header is not valid JSON: byte 6 is 0xe9, not UTF-8 text (near '{\"caf\\xe9\": 1}')"]),
    "syntax": (safetensors_bytes('{"x": tru}'), ["syntax error at byte 10 of 10, near '{\"x\": tru}'"]),
    "not_object": (safetensors_bytes("[1, 2, 3]"), ["not a JSON object"]),
    "unknown_dtype": (safetensors_bytes('{"x":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,8]}}', F8),
                      ["'x'", "unknown dtype 'F8_E9'"]),
    "offsets_out_of_range": (safetensors_bytes('{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', F8),
                             ["'x'", "run past the end of the data"]),
    "size_vs_shape": (safetensors_bytes('{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', F8),
                      ["'x'", "span 8 bytes", "needs 12"]),
    "overlap": (safetensors_bytes('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                  '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', F8), ["overlap"]),
    "reversed": (safetensors_bytes('{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', F8), ["reversed"]),
    "negative_shape": (safetensors_bytes('{"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', F8),
                       ["non-negative integers"]),
    "float_shape": (safetensors_bytes('{"x":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}', F8),
                    ["non-negative integers"]),
    "overflow_shape": (safetensors_bytes('{"x":{"dtype":"F32","shape":[4294967296,4294967296,16],'
                                         '"data_offsets":[0,8]}}', F8), ["larger than the file"]),
    "bad_metadata": (safetensors_bytes('{"__metadata__":{"a":1}}'), ["__metadata__"]),
    # What people pass as a model by mistake is named, with what to do.
    "text": (b"These are my notes about the model.\n", ["a text file, not a safetensors model"]),
    "config": (b'{\n  "hidden_size": 1024\n}\n', ["a JSON text file (a config?)"]),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1214099224\n",
            ["a Git LFS pointer", "git lfs pull"]),
    "npy": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}", ["a NumPy .npy array"]),
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_broken_safetensors_file_is_refused_naming_it(tmp_path, name):
    raw, needles = HEADERS[name]
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(raw)
    message = expect_error(lambda: vitmsn.Model(path), *needles, prefix=str(path))
    assert "json.exception" not in message


@pytest.mark.parametrize("rel, needles", [
    ("models/tiny/pytorch_model.bin", ["a PyTorch checkpoint (torch.save zip", "vitmsn-convert"]),
    ("torch/malicious_os_system.pt", ["a PyTorch checkpoint (torch.save zip", "vitmsn-convert"]),
    ("torch/malicious_eval.pt", ["a PyTorch checkpoint (torch.save zip"]),
    ("torch/legacy.pt", ["a Python pickle", "vitmsn-convert"]),
    ("images/chelsea.png", ["a PNG image, not a model"]),
    ("images/rocket.jpg", ["a JPEG image, not a model"]),
    ("fuzz/safetensors/f32-shape-whose-byte-size-wraps-to-0.safetensors",
     ["tensor 'x': shape [1,4611686018427387904] is larger than the file"]),
])
def test_files_that_are_not_models_are_named_and_nothing_is_unpickled(rel, needles):
    expect_error(lambda: vitmsn.Model(data(rel)), *needles, prefix=data(rel))


def test_folder_with_only_pytorch_model_bin_says_to_convert_it_into_the_folder(tmp_path):
    shutil.copy(data("models/tiny/pytorch_model.bin"), tmp_path / "pytorch_model.bin")
    expect_error(lambda: vitmsn.Model(tmp_path), "pytorch_model.bin",
                 f"vitmsn-convert {tmp_path} {tmp_path}/model.safetensors")


def test_missing_path_and_folder_without_model_are_named(tmp_path):
    expect_error(lambda: vitmsn.Model("/nonexistent/model"), "/nonexistent/model")
    expect_error(lambda: vitmsn.Model(tmp_path), str(tmp_path), "no model.safetensors")


# --- models that disagree with their config (tests/model_load_test.cpp) ----------------------------------

def tiny_tensors(folder="tiny"):
    tensors, _ = read_safetensors(data(f"models/{folder}/model.safetensors"))
    return dict(tensors)


def make_model(tmp_path, tensors, config_text=None, folder="tiny", metadata=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_safetensors(tmp_path / "model.safetensors", tensors, metadata)
    text = config_text if config_text is not None else open(data(f"models/{folder}/config.json")).read()
    (tmp_path / "config.json").write_text(text)
    return tmp_path


def tiny_config(old, new, folder="tiny"):
    text = open(data(f"models/{folder}/config.json")).read()
    assert old in text
    return text.replace(old, new)


def test_missing_tensor_is_named(tmp_path):
    t = tiny_tensors()
    del t["encoder.layer.1.output.dense.bias"]
    expect_error(lambda: vitmsn.Model(make_model(tmp_path, t)), "model.safetensors",
                 "missing tensor 'encoder.layer.1.output.dense.bias'")


def test_wrong_shape_names_tensor_expected_and_actual(tmp_path):
    t = tiny_tensors()
    t["encoder.layer.0.attention.attention.query.weight"] = np.zeros((64, 32), np.float32)
    expect_error(lambda: vitmsn.Model(make_model(tmp_path, t)), "model.safetensors",
                 "tensor 'encoder.layer.0.attention.attention.query.weight'", "has shape [64,32], expected [64,64]")


def test_config_with_more_or_fewer_layers_than_the_file(tmp_path):
    more = make_model(tmp_path / "more", tiny_tensors(),
                      tiny_config('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    expect_error(lambda: vitmsn.Model(more), "missing tensor 'encoder.layer.2.layernorm_before.weight'", "3 layers")
    fewer = make_model(tmp_path / "fewer", tiny_tensors(),
                       tiny_config('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    expect_error(lambda: vitmsn.Model(fewer), "more layers than the config", "encoder.layer.1.")


def test_config_hidden_size_disagreeing_with_the_tensors(tmp_path):
    m = make_model(tmp_path, tiny_tensors(), tiny_config('"hidden_size": 64', '"hidden_size": 32'))
    expect_error(lambda: vitmsn.Model(m), "embeddings.cls_token", "expected [1,1,32]")


def test_integer_dtype_weight_is_refused(tmp_path):
    t = tiny_tensors()
    t["layernorm.bias"] = t["layernorm.bias"].view(np.int32)
    expect_error(lambda: vitmsn.Model(make_model(tmp_path, t)), "'layernorm.bias'", "dtype I32")


def test_classifier_head_with_mismatched_labels(tmp_path):
    text = tiny_config('"4": "camera"', '"4": "camera", "5": "dog"', folder="tiny-cls")
    m = make_model(tmp_path, tiny_tensors("tiny-cls"), text, folder="tiny-cls")
    expect_error(lambda: vitmsn.Model(m), "classifier.weight", "5 rows", "6 labels")


def test_mistyped_config_field_and_file_without_config(tmp_path):
    m = make_model(tmp_path / "typed", tiny_tensors(), tiny_config('"hidden_size": 64', '"hidden_size": "64"'))
    expect_error(lambda: vitmsn.Model(m), "config.json: field 'hidden_size' must be an integer")
    alone = tmp_path / "x.safetensors"
    write_safetensors(alone, tiny_tensors())
    expect_error(lambda: vitmsn.Model(alone), "x.safetensors", "no model config")


def test_single_file_with_config_in_metadata_loads(tmp_path):
    cfg = json.load(open(data("models/tiny/config.json")))
    path = tmp_path / "alone.safetensors"
    write_safetensors(path, tiny_tensors(), {"config": json.dumps(cfg)})
    m = vitmsn.Model(path)
    assert m.config["hidden_size"] == 64 and m.source == str(path)


# --- images (tests/image_test.cpp, tests/fuzz_regression_test.cpp) --------------------------------------

def png_header(width, height):
    """A PNG that is only a signature and a valid IHDR chunk claiming width x height RGB pixels."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def random_bytes(n):
    state, out = 0x9E3779B97F4A7C15, bytearray()
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(state >> 56)
    return bytes(out)


def cut(rel, fraction):
    raw = open(data(rel), "rb").read()
    return raw[:int(len(raw) * fraction)]


PX = b"\x10" * 12
IMAGES = {
    "empty.png": (b"", ["empty"]),
    "random.bin": (random_bytes(4096), ["not a supported image"]),
    "notes.png": (b"This is a text file, not a picture.\n", ["not a supported image"]),
    "huge.png": (png_header(100000, 100000), ["100000x100000", "10000000000 pixels", "max_pixels"]),
    "cut_rocket.jpg": (cut("images/rocket.jpg", 0.6), ["truncated"]),
    "cut_coffee_progressive.jpg": (cut("images/coffee_progressive.jpg", 0.6), ["truncated"]),
    "half.png": (cut("images/chelsea.png", 0.5), []),
    "cut_rgb.ppm": (open(data("formats/rgb.ppm"), "rb").read()[:-1], ["image file is truncated"]),
    "cut_rgb.bmp": (open(data("formats/rgb.bmp"), "rb").read()[:-1], ["image file is truncated"]),
    "cut_rgb.tga": (open(data("formats/rgb.tga"), "rb").read()[:-27], ["image file is truncated"]),
    "z.pgm": (b"P5\n2 2\n0\n" + PX, ["maxval 0 is not between 1 and 65535"]),
    "b.ppm": (b"P6\n2 2\n70000\n" + PX + PX, ["maxval 70000"]),
    "g.ppm": (b"P61 1 255\n" + PX, ["must be followed by whitespace"]),
    "l.pgm": (b"P5\n2 x\n255\n" + PX, ["expected a number"]),
    "n.pgm": (b"P5\n12345678901 1\n255\n" + PX, ["longer than 10 digits"]),
    "x.hdr": (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 3\n" + b"\x40" * 24,
              ["not a supported image (PNG, JPEG, BMP, GIF, TGA, PSD, PNM)"]),
    "upload.gif": (b"GIF89a but not really", []),
}
FUZZ_IMAGES = {
    "jpeg-dht-more-than-256-codes.jpg": ["corrupt JPEG: a Huffman table has more than 256 codes"],
    "png-idat-claiming-1.9-GB.png": ["truncated or corrupt PNG: chunk 'IDAT' claims 1962934332 bytes, 72 are left"],
    "jpeg-progressive-scans-use-undefined-ac-tables.jpg": ["cannot decode JPEG"],
    "jpeg-dht-behind-ff-ff-d8.bin": ["not a supported image: a JPEG must start with FF D8 FF"],
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_broken_image_file_is_refused_naming_it(tiny, tmp_path, name):
    raw, needles = IMAGES[name]
    path = tmp_path / name
    path.write_bytes(raw)
    expect_error(lambda: tiny.extract_features(path), *needles, prefix=str(path))
    expect_error(lambda: vitmsn.Preprocessor()(path), *needles, prefix=str(path))
    expect_error(lambda: tiny.embed([data("images/chelsea.png"), path]), *needles, prefix=str(path))


@pytest.mark.parametrize("name", sorted(FUZZ_IMAGES))
def test_fuzzer_found_images_are_refused(tiny, name):
    path = data(f"fuzz/image/{name}")
    expect_error(lambda: tiny.extract_features(path), *FUZZ_IMAGES[name], prefix=path)


def test_truncated_jpeg_fixture_directory_and_missing_file(tiny, tmp_path):
    expect_error(lambda: tiny.extract_features(data("images/truncated.jpg")), "truncated",
                 prefix=data("images/truncated.jpg"))
    expect_error(lambda: tiny.extract_features(tmp_path), "directory", prefix=str(tmp_path))
    expect_error(lambda: tiny.extract_features(tmp_path / "no_such_image.png"), prefix=str(tmp_path))


def test_every_saved_fuzz_image_is_accepted_or_refused_with_error(tiny):
    # As FuzzRegression.SavedImageInputsAreAcceptedOrRefusedWithError: nothing else may escape.
    import os
    for name in sorted(os.listdir(data("fuzz/image"))):
        try:
            tiny.extract_features(data(f"fuzz/image/{name}"))
        except vitmsn.Error:
            pass


def test_a_sliver_needing_a_large_intermediate_is_resized_within_the_default_limit():
    # The fuzzer's 3x265535 image: Pillow's order widens every row to 224 columns first (59 M pixels);
    # within Pillow's limit it is resized, as the C++ test says.
    sliver = np.zeros((265535, 3), np.uint8)
    assert vitmsn.Preprocessor()(sliver).shape == (3, 224, 224)


def test_an_array_whose_resize_needs_an_oversized_intermediate_is_refused(tiny):
    # 1 x 800,000 widened to 224 columns first: 179.2 M intermediate pixels, above Pillow's limit.
    sliver = np.zeros((800000, 1), np.uint8)
    expect_error(lambda: tiny.extract_features(sliver), "above the limit of 178956970")


def test_broken_preprocessor_configs_are_refused_naming_file_and_key(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text('{"size": ' + "[" * 500000 + "]" * 500000 + "}")
    expect_error(lambda: vitmsn.Preprocessor(nested), "key 'size' must be an integer", prefix=str(nested))
    overflow = tmp_path / "overflow.json"
    overflow.write_text('{"rescale_factor": 1e400}')
    expect_error(lambda: vitmsn.Preprocessor(overflow), "invalid JSON", prefix=str(overflow))
    fuzz = data("fuzz/json/number-overflow-4e505.json")
    expect_error(lambda: vitmsn.Preprocessor(fuzz), "invalid JSON", prefix=fuzz)


# --- arrays and arguments (tests/model_test.cpp) -----------------------------------------------------------

def test_pixel_values_with_a_wrong_shape_are_refused_with_the_library_message(tiny):
    expect_error(lambda: tiny.extract_features(np.zeros((1, 224, 224), np.float32)), "1 channels")
    expect_error(lambda: tiny.extract_features(np.zeros((3, 224, 225), np.float32)), "multiples of the patch size 7")
    expect_error(lambda: tiny(np.zeros((1, 3, 224, 225), np.float32)), "multiples of the patch size 7",
                 "the nearest valid size is 224x224")
    # 90,001 tokens: refused before anything is allocated.
    huge = np.zeros((3, 7 * 300, 7 * 300), np.float32)
    expect_error(lambda: tiny.extract_features(huge), "more than the limit of 65537")
    expect_error(lambda: tiny(huge[None]), "limit of 65537")
    expect_error(lambda: tiny.extract_features(data("images/chelsea.png"), size=(320, 240)),
                 "the nearest valid size is 322x238")


def test_arrays_of_the_wrong_kind_say_what_is_expected(tiny):
    expect_error(lambda: tiny.extract_features(np.zeros((224, 224, 3), np.float32)), "channel first [3, H, W]",
                 "uint8 [H, W, 3]")
    expect_error(lambda: tiny.extract_features(np.zeros((224, 224, 4), np.uint8)), "RGBA")
    expect_error(lambda: tiny.extract_features(np.zeros((0, 5, 3), np.uint8)), "empty")
    expect_error(lambda: tiny.extract_features(np.zeros((224, 224, 3), np.int64)), "int64")
    expect_error(lambda: tiny.extract_features(np.zeros((2, 3, 224, 224), np.float32)), "model(pixel_values)")
    expect_error(lambda: tiny(pixels("chelsea")), "extract_features()")
    expect_error(lambda: tiny(np.zeros((0, 3, 224, 224), np.float32)), "empty")
    expect_error(lambda: tiny(np.zeros((1, 3, 224, 224), np.uint8)), "uint8")
    expect_error(lambda: vitmsn.Preprocessor()(pixels("chelsea")), "already pixel values")
    expect_error(lambda: tiny.extract_features(pixels("chelsea"), size=280), "applies to images")


def test_bad_arguments_raise_error_or_type_error(tiny, tiny_cls):
    expect_error(lambda: tiny.extract_features(pixels("chelsea"), hidden_states=[3]), "hidden state")
    expect_error(lambda: tiny.extract_features(pixels("chelsea"), cls_attention=[2]), "layer")
    expect_error(lambda: tiny.classify(pixels("chelsea")), "no classifier head")
    expect_error(lambda: tiny.logits(tiny.extract_features(pixels("chelsea"))), "no classifier head")
    expect_error(lambda: tiny_cls.classify(pixels("chelsea"), top=0), "top must be at least 1")
    expect_error(lambda: tiny.embed([data("images/chelsea.png")], pool="max"), "pool must be 'cls' or 'mean'")
    expect_error(lambda: tiny.embed([data("images/chelsea.png")], batch_size=0), "batch_size")
    expect_error(lambda: vitmsn.Model(data("models/tiny"), threads=0), "threads must be at least 1")
    expect_error(lambda: vitmsn.Preprocessor().with_size(0, 5), "at least 1x1")
    for call in [lambda: tiny.extract_features(42), lambda: tiny.extract_features([1, 2]),
                 lambda: tiny.extract_features(pixels("chelsea"), size="big"),
                 lambda: tiny.extract_features(pixels("chelsea"), hidden_states=["a"]),
                 lambda: tiny.embed(data("images/chelsea.png")), lambda: tiny(None),
                 lambda: vitmsn.Model(42), lambda: vitmsn.Preprocessor(3.5)]:
        with pytest.raises(TypeError):
            call()


# --- a model file replaced under a loaded model (tests/model_load_test.cpp, ModelFileChanged) ------------

def _copy_tiny(tmp_path):
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        shutil.copy(data("models/tiny/" + name), tmp_path / name)
    return tmp_path / "model.safetensors"


def _rewrite_in_place(path, raw):
    with open(path, "r+b") as f:  # the same file (inode), truncated and rewritten, as cp does
        f.truncate(0)
        f.write(raw)


def test_a_model_file_rewritten_in_place_raises_error_naming_it(tmp_path):
    weights = _copy_tiny(tmp_path)
    model = vitmsn.Model(str(tmp_path))
    before = np.array(model.extract_features(pixels("chelsea")).last_hidden_state)
    copied = vitmsn.Model(str(tmp_path), copy_weights=True)
    inode = weights.stat().st_ino
    _rewrite_in_place(weights, weights.read_bytes()[:4096])
    assert weights.stat().st_ino == inode
    message = expect_error(lambda: model.extract_features(pixels("chelsea")),
                           "the model file changed on disk after it was loaded (size 704904 -> 4096 bytes",
                           "load it with its weights copied (copy_weights)", prefix=str(weights) + ": ")
    assert "::" not in message, message
    expect_error(lambda: model(pixels("chelsea")[None]), "changed on disk", prefix=str(weights))
    # copy_weights: a private copy the rewrite cannot touch.
    after = copied.extract_features(pixels("chelsea")).last_hidden_state
    assert np.array_equal(after, before)


def test_a_model_file_replaced_by_rename_keeps_the_loaded_model_working(tmp_path):
    weights = _copy_tiny(tmp_path)
    model = vitmsn.Model(str(tmp_path))
    before = np.array(model.extract_features(pixels("chelsea")).last_hidden_state)
    new = tmp_path / "new.safetensors"
    shutil.copy(data("models/tiny-cls/model.safetensors"), new)
    new.replace(weights)  # rename(2) over the path
    assert np.array_equal(model.extract_features(pixels("chelsea")).last_hidden_state, before)


# --- Error kinds: each a vitmsn.Error, and the matching builtin -------------------------------------------

def test_a_missing_model_path_raises_file_not_found_error(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        vitmsn.Model(path)
    e = info.value
    assert isinstance(e, vitmsn.Error) and isinstance(e, vitmsn.NotFoundError) and isinstance(e, ValueError)
    assert e.kind == "not_found" and e.path == str(path) and e.filename == str(path)
    assert str(e).startswith(str(path) + ": ")


def test_a_missing_image_raises_file_not_found_error_with_its_errno(tiny, tmp_path):
    import errno
    path = tmp_path / "absent.png"
    with pytest.raises(FileNotFoundError) as info:
        tiny.extract_features(str(path))
    assert isinstance(info.value, vitmsn.Error)
    assert info.value.errno == errno.ENOENT and info.value.filename == str(path)
    assert str(info.value).startswith(str(path) + ": cannot open: ")


def test_a_malformed_file_raises_value_error_with_its_path(tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError) as info:
        vitmsn.Model(path)
    e = info.value
    assert isinstance(e, vitmsn.Error) and isinstance(e, vitmsn.MalformedError)
    assert not isinstance(e, OSError)
    assert e.kind == "malformed" and e.path == str(path)
    assert "shorter than the 8-byte header length" in str(e)


def test_kinds_of_unsupported_limit_and_argument_errors(tiny, tmp_path):
    path = tmp_path / "f8.safetensors"
    path.write_bytes(safetensors_bytes('{"x":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,8]}}', F8))
    with pytest.raises(vitmsn.UnsupportedError) as info:
        vitmsn.Model(path)
    assert info.value.path == str(path)
    with pytest.raises(vitmsn.ArgumentError) as info:
        tiny(np.zeros((1, 2, 224, 224), np.float32))
    assert isinstance(info.value, ValueError) and info.value.path is None
    with pytest.raises(vitmsn.ArgumentError):
        tiny.embed([data("images/chelsea.png")], pool="max")
    # Every class is a vitmsn.Error; the OS kinds are OSErrors, the others not.
    for cls in (vitmsn.NotFoundError, vitmsn.PermissionDeniedError, vitmsn.IoError):
        assert issubclass(cls, vitmsn.Error) and issubclass(cls, OSError)
    for cls in (vitmsn.MalformedError, vitmsn.UnsupportedError, vitmsn.LimitError, vitmsn.ArgumentError):
        assert issubclass(cls, vitmsn.Error) and issubclass(cls, ValueError) and not issubclass(cls, OSError)


def test_an_unreadable_file_raises_permission_error(tmp_path):
    import os
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = tmp_path / "locked.safetensors"
    path.write_bytes(b"{}")
    path.chmod(0)
    try:
        with pytest.raises(PermissionError) as info:
            vitmsn.Model(path)
    finally:
        path.chmod(0o644)
    assert isinstance(info.value, vitmsn.Error) and info.value.kind == "permission"


def test_logits_refuses_features_of_a_model_with_another_backbone(tiny, tiny_cls, tmp_path):
    x = data("images/chelsea.png")
    assert tiny.backbone != tiny_cls.backbone and len(tiny.backbone) == 64
    with pytest.raises(vitmsn.ArgumentError) as info:
        tiny_cls.logits(tiny.extract_features(x))
    message = str(info.value)
    assert tiny.backbone[:16] in message and tiny_cls.backbone[:16] in message, message
    assert tiny.source in message and tiny_cls.source in message, message
    with pytest.raises(vitmsn.ArgumentError, match="another model"):
        tiny_cls.classify(tiny.extract_features(x))
    # Features of the same backbone are taken: the model's own, and those of a conversion of it
    # (another file, another dtype, the identity recorded by convert).
    own = tiny_cls.logits(tiny_cls.extract_features(x))
    assert np.array_equal(own, tiny_cls.logits(x))
    vitmsn.convert(data("models/tiny-cls"), str(tmp_path / "f16.safetensors"), dtype="f16")
    f16 = vitmsn.Model(str(tmp_path / "f16.safetensors"))
    assert f16.backbone == tiny_cls.backbone
    assert tiny_cls.logits(f16.extract_features(x)).shape == own.shape
