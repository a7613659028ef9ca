"""Point 7 of "Python, second pass": in-memory images get the file pixel limit, `size` errors say
`size`, too many threads warn naming the CPU count, a Model pickles by path and options."""

import os
import pickle

import numpy as np
import pytest

import vitmsn
from conftest import data


def test_a_huge_in_memory_image_gets_the_librarys_pixel_limit(tiny):
    huge = np.broadcast_to(np.zeros(3, np.uint8), (20000, 20000, 3))  # 400 M pixels, no memory behind it
    for f in (tiny.extract_features, tiny.preprocessor):
        with pytest.raises(vitmsn.LimitError, match="more than the limit of 178956970 pixels") as info:
            f(huge)
        assert "::" not in str(info.value), "a C++ name in a Python message: " + str(info.value)


def test_a_size_out_of_range_names_size_not_an_internal_key(tiny):
    with pytest.raises(vitmsn.ArgumentError) as info:
        tiny.extract_features(data("images/chelsea.png"), size=(7, 100002))
    message = str(info.value)
    assert message.startswith("size") and "100002" in message and "size.width" not in message, message
    with pytest.raises(vitmsn.ArgumentError, match="^size"):
        tiny.preprocessor(data("images/chelsea.png"), size=(100002, 7))


def test_more_threads_than_cpus_warns_naming_the_cpu_count():
    with pytest.warns(RuntimeWarning, match=f"more than the {vitmsn.default_threads()} CPUs"):
        m = vitmsn.Model(data("models/tiny"), threads=vitmsn.default_threads() + 1000)
    assert m.threads == vitmsn.default_threads() + 1000


def test_a_model_pickles_by_path_and_options(tiny):
    m = vitmsn.Model(data("models/tiny"), threads=1, compute="f32")
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is vitmsn.Model and back.threads == 1 and back.compute == "f32"
    assert back.source == m.source
    x = data("images/chelsea.png")
    assert np.array_equal(back.extract_features(x).last_hidden_state, tiny.extract_features(x).last_hidden_state)
    assert pickle.loads(pickle.dumps(tiny)).threads == tiny.threads


def test_a_preprocessor_pickles_by_its_settings(tiny, tmp_path):
    cfg = tmp_path / "preprocessor_config.json"
    cfg.write_text('{"size": {"shortest_edge": 112}, "resample": 3, "image_mean": [0.5, 0.4, 0.3]}')
    x = data("images/chelsea.png")
    for pre in (vitmsn.Preprocessor(), tiny.preprocessor, vitmsn.Preprocessor(cfg),
                vitmsn.Preprocessor(cfg).with_size(63, 77)):
        back = pickle.loads(pickle.dumps(pre))
        assert type(back) is vitmsn.Preprocessor
        assert back.config == pre.config
        assert np.array_equal(back(x), pre(x)), pre
    assert pickle.loads(pickle.dumps(vitmsn.Preprocessor(cfg)))(x).shape == (3, 112, 168)
    # Another state is refused with the library's error, not a crash.
    pre = vitmsn.Preprocessor.__new__(vitmsn.Preprocessor)
    with pytest.raises(vitmsn.ArgumentError, match="pickled vitmsn.Preprocessor"):
        pre.__setstate__(("{}", 1))
    with pytest.raises(vitmsn.MalformedError, match="a pickled vitmsn.Preprocessor"):
        pre.__setstate__(("not json",))
