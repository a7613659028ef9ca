"""Model.embed() streams its inputs: any iterable, batch by batch, on_error="raise"|"skip", the failing
input named, Ctrl-C with the partial results."""

import gc
import os
import signal
import weakref

import numpy as np
import pytest
from PIL import Image

import vitmsn
from conftest import data

PATHS = [data(f"images/{c}.png") for c in ("chelsea", "camera", "horse", "coffee", "green_palette")]


def test_embed_consumes_a_generator_batch_by_batch_without_keeping_earlier_inputs(tiny):
    want = tiny.embed(PATHS)
    alive, pulled = [], []

    def images():
        for i, p in enumerate(PATHS):
            im = Image.open(p)
            im.load()
            alive.append(weakref.ref(im))
            pulled.append(i)
            yield im
            del im

    seen_alive = []

    class Watch:
        def __iter__(self):
            for x in images():
                gc.collect()
                seen_alive.append(sum(r() is not None for r in alive))
                yield x

    out = tiny.embed(Watch(), batch_size=2)
    assert np.array_equal(out, want)
    # Never more than one batch (2) of images referenced, plus the one just pulled.
    assert max(seen_alive) <= 3, seen_alive


def test_embed_raise_names_the_failing_input_and_keeps_the_class(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    inputs = PATHS[:2] + [str(bad)] + PATHS[2:]
    for batch_size in (1, 2):
        with pytest.raises(vitmsn.Error) as info:
            tiny.embed(iter(inputs), batch_size=batch_size)
        message = str(info.value)
        assert message.startswith(str(bad)), message
        assert "embed: input 2" in message and "bad.png" in message, message
        assert isinstance(info.value, type(info.value.__cause__))
        assert info.value.partial.embeddings.shape[0] == 2
        assert list(info.value.partial.indices) == [0, 1]
    with pytest.raises(TypeError, match="embed: input 1, object"):
        tiny.embed([PATHS[0], object()])


def test_embed_skip_returns_the_rows_that_succeeded_with_their_indices(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    inputs = [PATHS[0], str(bad), PATHS[1], object(), PATHS[2]]
    want = tiny.embed([PATHS[0], PATHS[1], PATHS[2]])
    for batch_size in (1, 2, 5):
        result = tiny.embed((x for x in inputs), batch_size=batch_size, on_error="skip")
        assert isinstance(result, vitmsn.EmbedResult)
        assert np.array_equal(result.embeddings, want)
        assert list(result.indices) == [0, 2, 4]
        assert [i for i, _ in result.skipped] == [1, 3]
        assert isinstance(result.skipped[0][1], vitmsn.Error)
        assert isinstance(result.skipped[1][1], TypeError)
    with pytest.raises(vitmsn.ArgumentError, match="on_error"):
        tiny.embed(PATHS, on_error="ignore")


def test_embed_checks_its_arguments_before_the_first_input(tiny):
    pulled = []

    def gen():
        pulled.append(1)
        yield PATHS[0]

    with pytest.raises(vitmsn.Error, match="size"):
        tiny.embed(gen(), size=(7, 100002), on_error="skip")
    assert not pulled


def test_ctrl_c_stops_embed_promptly_with_the_partial_results(tiny):
    def gen():
        for i in range(1000):
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield PATHS[i % len(PATHS)]

    with pytest.raises(KeyboardInterrupt) as info:
        tiny.embed(gen())
    partial = info.value.partial
    assert 3 <= partial.embeddings.shape[0] <= 4, partial.embeddings.shape
    assert np.array_equal(partial.embeddings[:3], tiny.embed(PATHS[:3]))
    assert list(partial.indices[:3]) == [0, 1, 2]


def test_embed_progress_without_a_length_counts(tiny, capsys):
    tiny.embed((p for p in PATHS), progress=True)
    err = capsys.readouterr().err
    assert "images" in err and "/" not in err.split("images")[0], err


def test_embed_progress_outside_a_terminal_prints_a_line_per_tenth(tiny, capsys, monkeypatch):
    monkeypatch.setattr(vitmsn, "_clock", lambda: 0.0)  # no time passes: only the 10 % rule prints
    tiny.embed(PATHS * 4, progress=True)  # 20 inputs: a line every 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ")[1].split(" ")[0] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)], lines
    assert all("\r" not in line for line in lines), lines


def test_embed_progress_outside_a_terminal_prints_a_line_every_30_seconds(tiny, capsys, monkeypatch):
    now = [0.0]

    def clock():  # 31 s pass between two looks at the clock
        now[0] += 31.0
        return now[0]

    monkeypatch.setattr(vitmsn, "_clock", clock)
    tiny.embed((p for p in PATHS), progress=True)  # no len(): only the time rule prints before the end
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["1", "2", "3", "4", "5"], lines
    monkeypatch.setattr(vitmsn, "_clock", lambda: 0.0)  # no time passes: the final count only
    tiny.embed((p for p in PATHS), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["5"], lines
