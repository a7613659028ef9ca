"""inspect.signature() works on the Model's methods, and the stub's type aliases exist at runtime."""

import inspect

import vitmsn


def test_model_methods_have_python_signatures():
    assert list(inspect.signature(vitmsn.Model.extract_features).parameters) == [
        "self", "x", "hidden_states", "cls_attention", "size", "attentions"]
    assert list(inspect.signature(vitmsn.Model.classify).parameters) == ["self", "x", "top"]
    assert list(inspect.signature(vitmsn.Model.logits).parameters) == ["self", "x"]
    assert "on_error" in inspect.signature(vitmsn.Model.embed).parameters
    assert "output_hidden_states" in inspect.signature(vitmsn.Model.__call__).parameters
    assert inspect.signature(vitmsn.Model.extract_features).parameters["size"].default is None


def test_the_stubs_type_aliases_exist_at_runtime():
    for name in ("Input", "Size", "Layers"):
        assert getattr(vitmsn, name) is not None, name


def test_docstrings_say_bytes_paths_are_accepted():
    assert "bytes" in vitmsn.Model.__doc__
    assert "bytes" in vitmsn.Model.__init__.__doc__
