"""Hugging Face habits: model(pixel_values, output_hidden_states=..., output_attentions=...) returns
BaseModelOutput's fields, unknown keywords are Python's own TypeError, a channels-last batch is named
as such."""

import json
import struct

import numpy as np
import pytest

import vitmsn
from conftest import TOLERANCE, data, fixture, max_abs_error, pixels


def test_output_hidden_states_returns_hf_fields_as_numpy(tiny):
    batch = np.stack([pixels("astronaut"), pixels("chelsea")])
    out = tiny(batch, output_hidden_states=True)
    assert isinstance(out, vitmsn.ModelOutput)
    assert out.last_hidden_state.shape == (2, 1025, 64)
    assert np.array_equal(out.last_hidden_state, tiny(batch))
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == 3
    for b, case in enumerate(("astronaut", "chelsea")):
        for i in range(3):
            assert out.hidden_states[i].shape == (2, 1025, 64)
            assert max_abs_error(out.hidden_states[i][b], fixture(f"{case}.hidden_states.{i}")) < TOLERANCE
    assert out.attentions is None  # not asked for
    plain = tiny(batch[:1], output_hidden_states=False, output_attentions=False)
    assert plain.hidden_states is None and np.array_equal(plain.last_hidden_state, tiny(batch[:1]))
    assert isinstance(tiny(batch[:1]), np.ndarray)  # without keywords: the array, as before


def softmax_maps(q, k, heads):
    """float64 softmax(q_h k_h^T / sqrt(d)) per head: [heads, N, N]."""
    n, d = q.shape
    hd = d // heads
    qh = q.reshape(n, heads, hd).transpose(1, 0, 2)
    kh = k.reshape(n, heads, hd).transpose(1, 0, 2)
    s = qh @ kh.transpose(0, 2, 1) / np.sqrt(hd)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def reference_maps(case, layer):
    """Layer `layer`'s attention maps by the definition, in float64, from HF's own input to the layer."""
    path = data("models/tiny/model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()

    def tensor(name):
        t = header[f"encoder.layer.{layer}.{name}"]
        a, b = t["data_offsets"]
        return np.frombuffer(body[a:b], np.float32).reshape(t["shape"]).astype(np.float64)

    x = fixture(f"{case}.hidden_states.{layer}").astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    h = (x - mu) / np.sqrt(var + 1e-6) * tensor("layernorm_before.weight") + tensor("layernorm_before.bias")
    q = h @ tensor("attention.attention.query.weight").T + tensor("attention.attention.query.bias")
    k = h @ tensor("attention.attention.key.weight").T + tensor("attention.attention.key.bias")
    return softmax_maps(q, k, 4)


def test_output_attentions_returns_hf_maps(tiny):
    cases = ("astronaut", "chelsea")
    batch = np.stack([pixels(c) for c in cases])
    out = tiny(batch, output_attentions=True)
    assert out.hidden_states is None
    assert isinstance(out.attentions, tuple) and len(out.attentions) == 2
    assert np.array_equal(out.last_hidden_state, tiny(batch))
    for layer, maps in enumerate(out.attentions):
        assert maps.shape == (2, 4, 1025, 1025) and maps.dtype == np.float32
        for b, case in enumerate(cases):
            # Row 0 of each head: Hugging Face's own CLS attention; every row: the float64 definition.
            assert max_abs_error(maps[b, :, 0, :], fixture(f"{case}.cls_attention.{layer}")) < TOLERANCE
            err = float(np.abs(maps[b] - reference_maps(case, layer)).max())
            assert err < TOLERANCE, (case, layer, err)
            assert np.allclose(maps[b].sum(-1), 1.0, atol=1e-5)
    both = tiny(batch[:1], output_hidden_states=True, output_attentions=True)
    assert len(both.hidden_states) == 3 and len(both.attentions) == 2
    assert both.attentions[0].shape == (1, 4, 1025, 1025) and not both.attentions[0].flags.owndata  # a view
    assert np.array_equal(both.attentions[1][0], out.attentions[1][0])
    assert np.array_equal(both.hidden_states[2][0], tiny(batch[:1], output_hidden_states=True).hidden_states[2][0])


def test_extract_features_returns_the_maps_asked_for(tiny):
    f = tiny.extract_features(pixels("chelsea"), attentions=[-1], cls_attention=[1])
    assert sorted(f.attentions) == [1] and f.attentions[1].shape == (4, 1025, 1025)
    assert np.array_equal(f.attentions[1][:, 0, :], f.cls_attention[1])
    assert repr(f) == "vitmsn.Features(last_hidden_state [1025, 64], cls_attention [1], attentions [1])"
    with pytest.raises(vitmsn.Error, match="layer"):
        tiny.extract_features(pixels("chelsea"), attentions=[2])


def test_unknown_keywords_are_pythons_own_type_error(tiny):
    with pytest.raises(TypeError, match="unexpected keyword argument 'interpolate_pos_encodings'") as info:
        tiny(pixels("chelsea")[None], interpolate_pos_encodings=True)
    assert len(str(info.value)) < 200


def test_a_channels_last_batch_says_channel_first(tiny):
    with pytest.raises(vitmsn.ArgumentError, match=r"must be channel first \[B, 3, H, W\]"):
        tiny(np.zeros((1, 224, 224, 3), np.float32))
