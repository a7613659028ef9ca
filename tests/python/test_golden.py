"""Golden tests through Python: the module's outputs against Hugging Face's own (tests/data/expected,
computed by transformers in float64), at the C++ golden tests' tolerance (1e-4 max abs error)."""

import numpy as np
import pytest

import vitmsn
from conftest import IMAGE_CASES, PNG_CASES, TOLERANCE, data, fixture, max_abs_error, pixels


@pytest.mark.parametrize("case", IMAGE_CASES + ["chelsea.280x280", "chelsea.224x336"])
def test_last_hidden_state_matches_hugging_face(tiny, case):
    f = tiny.extract_features(pixels(case))
    err = max_abs_error(f.last_hidden_state, fixture(case + ".last_hidden_state"))
    print(f"{case}.last_hidden_state: max abs error {err:.3g}")
    assert err <= TOLERANCE


@pytest.mark.parametrize("case", ["chelsea", "astronaut"])
def test_hidden_states_and_cls_attention_match_hugging_face(tiny, case):
    f = tiny.extract_features(pixels(case), hidden_states=[0, 1, 2], cls_attention=[0, 1])
    assert sorted(f.hidden_states) == [0, 1, 2] and sorted(f.cls_attention) == [0, 1]
    for i in range(3):
        assert max_abs_error(f.hidden_states[i], fixture(f"{case}.hidden_states.{i}")) <= TOLERANCE, i
    for i in range(2):
        assert f.cls_attention[i].shape == (4, 1025)
        assert max_abs_error(f.cls_attention[i], fixture(f"{case}.cls_attention.{i}")) <= TOLERANCE, i
    # Negative indices count from the end and come back under their index; True asks for all.
    g = tiny.extract_features(pixels(case), hidden_states=-1, cls_attention=True)
    assert sorted(g.hidden_states) == [2] and sorted(g.cls_attention) == [0, 1]
    assert np.array_equal(g.hidden_states[2], f.hidden_states[2])


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_logits_match_hugging_face(tiny_cls, case):
    err = max_abs_error(tiny_cls.logits(pixels(case)), fixture(case + ".logits"))
    print(f"{case}.logits: max abs error {err:.3g}")
    assert err <= TOLERANCE


def test_logits_of_features_equal_logits_of_the_input(tiny_cls):
    f = tiny_cls.extract_features(pixels("rocket"))
    assert np.array_equal(tiny_cls.logits(f), tiny_cls.logits(pixels("rocket")))


def test_classify_is_the_softmax_of_the_logits_in_order(tiny_cls):
    logits = fixture("rocket.logits").astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = tiny_cls.classify(pixels("rocket"), top=3)
    order = np.argsort(-p, kind="stable")[:3]
    assert [label for label, _ in top] == [tiny_cls.labels[i] for i in order]
    assert np.allclose([prob for _, prob in top], p[order], atol=1e-5)
    assert len(tiny_cls.classify(pixels("rocket"), top=None)) == 5
    assert len(tiny_cls.classify(pixels("rocket"), top=50)) == 5


def test_model_call_on_a_batch_of_fixture_pixel_values_reproduces_hugging_face(tiny):
    # What ViTImageProcessor(images, return_tensors="np")["pixel_values"] is: float32 [B, 3, H, W].
    cases = ["chelsea", "astronaut", "coffee"]
    batch = np.stack([pixels(c) for c in cases])
    out = tiny(batch)
    assert out.shape == (3, 1025, 64) and out.dtype == np.float32
    for i, case in enumerate(cases):
        assert max_abs_error(out[i], fixture(case + ".last_hidden_state")) <= TOLERANCE, case
    one = tiny(pixels("chelsea.224x336")[None])
    assert one.shape == (1, 1537, 64)
    assert max_abs_error(one[0], fixture("chelsea.224x336.last_hidden_state")) <= TOLERANCE


@pytest.mark.parametrize("case", PNG_CASES)
def test_png_file_gives_hugging_face_features(tiny, case):
    f = tiny.extract_features(data(f"images/{case}.png"))
    assert max_abs_error(f.last_hidden_state, fixture(case + ".last_hidden_state")) <= TOLERANCE


@pytest.mark.parametrize("case", PNG_CASES)
def test_preprocessor_gives_hugging_face_pixel_values(tiny, case):
    pre = vitmsn.Preprocessor(tiny)
    got = pre(data(f"images/{case}.png"))
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    # The C++ tests' pixel tolerance (tests/preprocess_test.cpp: 1e-6; measured 0).
    assert max_abs_error(got, fixture(case + ".pixel_values")) <= 1e-6
    assert np.array_equal(pre.resize(data(f"images/{case}.png")), fixture(case + ".resized_rgb"))


def test_other_sizes_use_interpolated_position_embeddings(tiny):
    for h, w in [(280, 280), (224, 336)]:
        f = tiny.extract_features(data("images/chelsea.png"), size=(h, w))
        assert max_abs_error(f.last_hidden_state, fixture(f"chelsea.{h}x{w}.last_hidden_state")) <= TOLERANCE
    assert tiny.extract_features(data("images/chelsea.png"), size=280).last_hidden_state.shape == (1601, 64)
    pre = vitmsn.Preprocessor(tiny).with_size(224, 336)
    assert max_abs_error(pre(data("images/chelsea.png")), fixture("chelsea.224x336.pixel_values")) <= 1e-6
