"""vitmsn.convert(): pip-only users turn Hugging Face's PyTorch checkpoint into the one-file model
(vitmsn's own restricted .bin reader, no torch), writing only the output they name."""

import os
import shutil

import numpy as np
import pytest

import vitmsn
from conftest import DATA, data


def test_convert_a_pytorch_folder_into_a_model_file_writing_only_the_output(tiny, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("pytorch_model.bin", "config.json", "preprocessor_config.json"):
        shutil.copyfile(DATA / "models/tiny" / name, folder / name)
    before = sorted(os.listdir(folder))
    out = tmp_path / "out" / "tiny.safetensors"
    out.parent.mkdir()
    report = vitmsn.convert(folder, out)
    assert sorted(os.listdir(folder)) == before, "nothing written beside the input"
    assert os.listdir(out.parent) == ["tiny.safetensors"]
    assert report["output"] == str(out) and report["weights_input"].endswith("pytorch_model.bin")
    assert report["tensors"] > 0 and report["head_backbone"] == "none" and not report["has_classifier"]
    model = vitmsn.Model(out)
    x = data("images/chelsea.png")
    assert np.array_equal(model.extract_features(x).last_hidden_state, tiny.extract_features(x).last_hidden_state)

    # bf16, from the .bin file itself (config.json beside it); an existing output needs overwrite=True.
    assert vitmsn.convert(folder / "pytorch_model.bin", out, dtype="bf16", overwrite=True)["bytes"] > 0
    assert vitmsn.Model(out).extract_features(x).last_hidden_state.shape == (1025, 64)
    with pytest.raises(vitmsn.Error, match=r"already exists \(to replace it: .*overwrite=True\)") as info:
        vitmsn.convert(folder, out)
    assert "::" not in str(info.value), "a C++ name in a Python message: " + str(info.value)
    with pytest.raises(vitmsn.Error, match="dtype|f32"):
        vitmsn.convert(folder, tmp_path / "x.safetensors", dtype="f8")
    assert not (tmp_path / "x.safetensors").exists()

    # The panel layout: loaded in place, the same features bit for bit; float32 only.
    panels = tmp_path / "panels.safetensors"
    report = vitmsn.convert(folder, panels, layout="panels")
    assert report["panel_width"] in (16, 32)
    assert np.array_equal(
        vitmsn.Model(panels).extract_features(x).last_hidden_state, tiny.extract_features(x).last_hidden_state
    )
    with pytest.raises(vitmsn.Error, match="panel layout .* dtype BF16"):
        vitmsn.convert(folder, tmp_path / "y.safetensors", dtype="bf16", layout="panels")
    with pytest.raises(vitmsn.Error, match="rows or panels"):
        vitmsn.convert(folder, tmp_path / "y.safetensors", layout="columns")
    assert not (tmp_path / "y.safetensors").exists()
