"""The module's surface: version, properties, docstrings on everything public, and the .pyi stub naming
exactly what the module has, with the same parameters."""

import ast
import inspect
import pathlib
import re

import vitmsn
from conftest import REPO, data

STUB = pathlib.Path(vitmsn.__file__).with_name("__init__.pyi")


def test_version_is_the_librarys():
    header = (REPO / "include/vitmsn/version.hpp").read_text()
    assert vitmsn.__version__ == re.search(r'kVersionString = "([^"]+)"', header).group(1)


def test_machine_facts():
    assert vitmsn.kernel_isa() in ("avx512", "avx2", "portable")
    assert vitmsn.default_threads() >= 1
    assert vitmsn.jpeg_decoder() in ("stb_image", "libjpeg-turbo")
    assert ".png" in vitmsn.image_file_extensions() and ".hdr" not in vitmsn.image_file_extensions()


def test_model_properties(tiny, tiny_cls):
    c = tiny.config
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["patch_size"]) == (64, 2, 4, 7)
    assert "id2label" not in c and tiny.labels == [] and not tiny.has_classifier
    assert tiny_cls.labels == ["cat", "astronaut", "coffee", "rocket", "camera"] and tiny_cls.has_classifier
    assert tiny_cls.config["id2label"] == dict(enumerate(tiny_cls.labels))
    assert tiny_cls.config["label2id"]["rocket"] == 3
    assert tiny.kernel_isa == vitmsn.kernel_isa()
    assert tiny.source == data("models/tiny/model.safetensors")
    assert vitmsn.Model(data("models/tiny"), threads=1).threads == 1
    assert tiny.preprocessor.config == vitmsn.Preprocessor(tiny).config
    assert "hidden 64, 2 layers" in repr(tiny) and "5 classes" in repr(tiny_cls)
    c["hidden_size"] = 1  # a copy: the model is immutable
    assert tiny.config["hidden_size"] == 64


def test_compute_chooses_the_arithmetic_of_the_linear_layers(tiny):
    import numpy as np
    import pytest

    assert tiny.compute == "f32"  # a float32 file stays exact by default
    bf16 = vitmsn.Model(data("models/tiny"), compute="bf16")
    assert bf16.compute == "bf16" and vitmsn.Model(data("models/tiny"), compute="f32").compute == "f32"
    a = tiny.extract_features(data("images/chelsea.png")).last_hidden_state
    b = bf16.extract_features(data("images/chelsea.png")).last_hidden_state
    cls_cosine = float(a[0] @ b[0] / np.linalg.norm(a[0]) / np.linalg.norm(b[0]))
    assert cls_cosine >= 0.9999 and not np.array_equal(a, b)
    with pytest.raises(vitmsn.Error, match="compute must be 'auto', 'f32' or 'bf16', got 'fp8'"):
        vitmsn.Model(data("models/tiny"), compute="fp8")


def test_features_repr_names_what_it_holds(tiny):
    f = tiny.extract_features(data("images/chelsea.png"), hidden_states=[0, -1], cls_attention=[1])
    assert repr(f) == "vitmsn.Features(last_hidden_state [1025, 64], hidden_states [0, 2], cls_attention [1])"


def public_callables():
    """Every public class, function, method and property of the package (a class without a
    constructor, like Features, has only Python's slot wrapper as __init__: not part of the API)."""
    for name in vitmsn.__all__:
        obj = getattr(vitmsn, name)
        if isinstance(obj, str):
            continue
        yield name, obj
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for cls in obj.__mro__:
                if not cls.__module__.startswith("vitmsn"):
                    continue
                for attr, member in vars(cls).items():
                    slot = type(member).__name__ == "wrapper_descriptor"
                    if (not attr.startswith("_") or attr in ("__init__", "__call__")) and not slot:
                        yield f"{name}.{attr}", member


def doc_text(obj):
    doc = inspect.getdoc(obj) or ""
    # pybind11 puts the signature on the first line: the text after it is what documents the function.
    lines = [line for line in doc.splitlines() if not re.match(r"^[\w.]+\(.*\) -> ", line)]
    return "\n".join(lines).strip()


def test_every_public_function_and_property_has_a_docstring():
    missing = [name for name, obj in public_callables() if len(doc_text(obj)) < 20]
    assert not missing, f"no docstring: {missing}"
    assert "vitmsn.Features" in doc_text(vitmsn.Model.extract_features)
    assert "Hugging Face" in doc_text(vitmsn.Model.__call__)


def stub_definitions():
    """{"name" or "Class.method": [parameter names] or "property"} of the stub's definitions."""
    tree = ast.parse(STUB.read_text())
    out, classes = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = [a.arg for a in node.args.args + node.args.kwonlyargs]
        elif isinstance(node, ast.ClassDef):
            classes.add(node.name)
            out[node.name] = None
            named_tuple = any(isinstance(b, ast.Name) and b.id == "NamedTuple" for b in node.bases)
            for item in node.body:
                if named_tuple and isinstance(item, ast.AnnAssign):  # a field: a read-only descriptor
                    out[f"{node.name}.{item.target.id}"] = "property"
                if isinstance(item, ast.FunctionDef):
                    is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)
                    out[f"{node.name}.{item.name}"] = "property" if is_property else [a.arg for a in item.args.args + item.args.kwonlyargs]
    return out, classes


def runtime_parameters(obj):
    """Parameter names of a Python function or a pybind11 function (from its signature line), or
    "property"."""
    if isinstance(obj, property) or inspect.isdatadescriptor(obj):
        return "property"
    try:
        return list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        pass
    first = (obj.__doc__ or "").splitlines()[0]
    match = re.match(r"^[\w.]+\((.*)\) -> ", first)
    assert match, f"no signature line in {obj!r}: {first}"
    return [p.split(":")[0].strip() for p in re.split(r", (?=\w+:)", match.group(1)) if p]


def test_the_stub_names_exactly_the_public_api_with_the_same_parameters():
    stub, classes = stub_definitions()
    runtime = {}
    for name, obj in public_callables():  # the most derived definition (vitmsn.Model's over _core's)
        runtime.setdefault(name, obj)
    public = {n for n in vitmsn.__all__ if n != "__version__"}
    assert {n for n in stub if "." not in n} == public, "stub and __all__ name different things"
    assert {n for n in runtime if "." in n} == {n for n in stub if "." in n}, "stub and module members differ"
    for name, params in stub.items():
        if params is None:
            continue
        got = runtime_parameters(runtime[name])
        assert got == params, f"{name}: stub {params}, module {got}"
    assert "__version__" in STUB.read_text()


def test_help_on_the_model_is_useful():
    text = inspect.getdoc(vitmsn.Model) or ""
    assert "safetensors" in text and "PIL" in text and "uint8" in text
    import pydoc
    rendered = pydoc.render_doc(vitmsn.Model, renderer=pydoc.plaintext)
    for method in ("extract_features", "embed", "classify", "logits", "__call__"):
        assert method in rendered
