"""Zero-copy results and inputs, reference counts, and the GIL: the arrays are the library's buffers,
contiguous float32 inputs are not copied, results outlive their model, and Python threads sharing one
Model run in parallel with results bit-identical to serial calls. No clock is read: overlap is seen
through the module's counters (vitmsn._core._stats)."""

import ctypes
import gc
import struct
import sys
import threading

import numpy as np

import vitmsn
from conftest import data, pixels

_core = vitmsn._core

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def eigen_matrix_storage(capsule):
    """(data pointer, rows, cols) of the Eigen matrix at the start of the object a capsule owns.

    vitmsn::Features starts with `Matrix last_hidden_state`, whose storage is {float* data; Index rows;
    Index cols} (Eigen's DenseStorage for a dynamic matrix)."""
    address = _capsule_pointer(capsule, b"vitmsn.Features")
    return struct.unpack("Pqq", ctypes.string_at(address, 24))


def live():
    return _core._stats()["live_buffers"]


def test_last_hidden_state_is_the_library_buffer_not_a_copy(tiny):
    f = tiny.extract_features(pixels("chelsea"), hidden_states=[1], cls_attention=[0])
    library_buffer = _core._stats()["last_result"]  # last_hidden_state's data as Model.extract_features returned it
    h = f.last_hidden_state
    assert h.ctypes.data == library_buffer, "the array is not the library's buffer"
    assert type(h.base).__name__ == "PyCapsule" and "vitmsn.Features" in repr(h.base)
    assert not h.flags.owndata and h.flags.c_contiguous and h.dtype == np.float32
    # The array's memory is the very Matrix the library returned, now owned by the capsule.
    pointer, rows, cols = eigen_matrix_storage(h.base)
    assert (pointer, rows, cols) == (h.ctypes.data, 1025, 64)
    # Every array of one result shares that owner; cls is a view of row 0.
    assert f.hidden_states[1].base is h.base and f.cls_attention[0].base is h.base and f.cls.base is h.base
    assert f.cls.ctypes.data == h.ctypes.data and np.shares_memory(f.cls, h)
    assert f.last_hidden_state.ctypes.data == h.ctypes.data  # the same buffer on every access


def test_model_call_of_one_image_returns_the_library_buffer(tiny):
    out = tiny(pixels("coffee")[None])
    assert out.ctypes.data == _core._stats()["last_result"]
    assert out.shape == (1, 1025, 64) and not out.flags.owndata
    assert eigen_matrix_storage(out.base)[0] == out.ctypes.data


def test_contiguous_float32_input_is_read_in_place_and_others_are_converted_once(tiny):
    px = pixels("horse")
    batch = np.stack([px, px])
    before = _core._stats()["input_copies"]
    tiny.extract_features(px)
    tiny(batch)
    tiny(px[None])
    tiny.embed([px, px], batch_size=2)
    assert _core._stats()["input_copies"] == before, "a C-contiguous float32 input was copied"
    tiny.extract_features(px.astype(np.float64))
    tiny(np.asfortranarray(batch))
    tiny.extract_features(px[:, ::-1, :])
    assert _core._stats()["input_copies"] == before + 3, "each other layout is converted exactly once"


def test_features_outlive_their_model_and_arrays_outlive_their_features():
    gc.collect()
    base = live()
    model = vitmsn.Model(data("models/tiny"))
    f = model.extract_features(data("images/chelsea.png"), hidden_states=[0])
    want = np.array(f.last_hidden_state)  # an independent copy to compare with
    assert live() == base + 1
    del model
    gc.collect()
    assert np.array_equal(f.last_hidden_state, want) and f.hidden_states[0].shape == (1025, 64)
    h, cls = f.last_hidden_state, f.cls
    refs = sys.getrefcount(h.base)
    del f
    gc.collect()
    assert live() == base + 1, "the buffer must live while arrays reference it"
    assert np.array_equal(h, want) and np.array_equal(cls, want[0])
    assert sys.getrefcount(h.base) == refs - 1  # the Features object's reference is gone, the arrays' remain
    del h
    gc.collect()
    assert live() == base + 1
    del cls
    gc.collect()
    assert live() == base, "the library buffer was not released with its last array"


def test_results_of_every_entry_point_are_released(tiny, tiny_cls):
    gc.collect()
    base = live()
    for _ in range(3):
        tiny.extract_features(pixels("camera"), hidden_states=True, cls_attention=True).mean_patch
        tiny(pixels("camera")[None])
        tiny(np.stack([pixels("camera")] * 2))
        tiny_cls.logits(pixels("camera"))
        tiny_cls.classify(pixels("camera"))
        vitmsn.Preprocessor()(data("images/camera.png"))
        vitmsn.Preprocessor().resize(data("images/camera.png"))
        tiny.embed([data("images/camera.png")])
    gc.collect()
    assert live() == base


def test_four_threads_sharing_one_model_match_serial_calls_bit_for_bit_and_overlap(tiny_cls):
    images = ["chelsea.png", "astronaut.png", "coffee.png", "camera.png", "horse.png", "green_palette.png"]
    inputs = [data(f"images/{name}") for name in images]
    inputs += [pixels("rocket"), np.asarray(__import__("PIL.Image").Image.open(data("images/coffee.png")))]
    serial = [tiny_cls.extract_features(x, hidden_states=[1], cls_attention=[0]) for x in inputs]
    serial_logits = [tiny_cls.logits(f) for f in serial]
    errors, mismatches = [], []
    start = threading.Barrier(4)
    _core._stats(reset=True)

    def work(t):
        start.wait()
        for r in range(3):
            for k in range(len(inputs)):
                i = (k + t) % len(inputs)  # threads work on different inputs at once
                try:
                    f = tiny_cls.extract_features(inputs[i], hidden_states=[1], cls_attention=[0])
                    s = serial[i]
                    same = (np.array_equal(f.last_hidden_state, s.last_hidden_state)
                            and np.array_equal(f.hidden_states[1], s.hidden_states[1])
                            and np.array_equal(f.cls_attention[0], s.cls_attention[0])
                            and np.array_equal(tiny_cls.logits(f), serial_logits[i]))
                    if not same:
                        mismatches.append((t, r, i))
                except Exception as e:  # noqa: BLE001 - any exception is a failure, reported below
                    errors.append(f"{inputs[i] if isinstance(inputs[i], str) else i}: {e!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} of {4 * 3 * len(inputs)} concurrent calls differ from serial ones"
    stats = _core._stats()
    assert stats["gil_still_held"] == 0
    # Two calls were inside the library at the same moment: the GIL was released around the work.
    assert stats["max_in_flight"] >= 2, stats


def test_python_code_runs_while_a_forward_pass_is_in_progress(tiny):
    # One thread runs forward passes; this thread, running Python, sees one in flight. With the GIL
    # held during the forward, this thread could only look between calls and would never see one.
    px = pixels("chelsea")
    done = threading.Event()
    seen = []

    def forwards():
        for _ in range(20):
            tiny.extract_features(px)
        done.set()

    worker = threading.Thread(target=forwards)
    worker.start()
    while not done.is_set():
        if _core._stats()["in_flight"] > 0:
            seen.append(True)
            break
        done.wait(0.0005)
    worker.join()
    assert seen, "never saw a forward pass in flight from another Python thread"
