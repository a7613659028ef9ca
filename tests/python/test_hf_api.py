"""Hugging Face habits: model(pixel_values, output_hidden_states=...) returns BaseModelOutput's fields,
output_attentions=True is a clear NotImplementedError, unknown keywords are Python's own TypeError,
a channels-last batch is named as such."""

import numpy as np
import pytest

import vitmsn
from conftest import TOLERANCE, fixture, max_abs_error, pixels


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
    assert out.attentions is None
    plain = tiny(batch[:1], output_hidden_states=False, output_attentions=False)
    assert plain.hidden_states is None and np.array_equal(plain.last_hidden_state, tiny(batch[:1]))
    assert isinstance(tiny(batch[:1]), np.ndarray)  # without keywords: the array, as before


def test_output_attentions_is_a_clear_not_implemented_error(tiny):
    with pytest.raises(NotImplementedError, match="cls_attention"):
        tiny(pixels("chelsea")[None], output_attentions=True)


def test_unknown_keywords_are_pythons_own_type_error(tiny):
    with pytest.raises(TypeError, match="unexpected keyword argument 'interpolate_pos_encodings'") as info:
        tiny(pixels("chelsea")[None], interpolate_pos_encodings=True)
    assert len(str(info.value)) < 200


def test_a_channels_last_batch_says_channel_first(tiny):
    with pytest.raises(vitmsn.ArgumentError, match=r"must be channel first \[B, 3, H, W\]"):
        tiny(np.zeros((1, 224, 224, 3), np.float32))
