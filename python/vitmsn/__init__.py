"""ViT-MSN features in Python, over vitmsn's C++ library.

The same numbers as Hugging Face's ViTMSNModel (float32 precision), the library's speed, weights
used in place from a memory map, and the library's error messages (vitmsn.Error, a ValueError; its
subclasses tell the kind: NotFoundError is also a FileNotFoundError, PermissionDeniedError a
PermissionError, IoError an OSError; MalformedError, UnsupportedError, LimitError, ArgumentError).

    import vitmsn
    model = vitmsn.Model("weights/vit-msn-large-7.safetensors")
    features = model.extract_features("cat.jpg")      # a path, a PIL image or a numpy array
    features.cls                                       # float32 [1024]: the CLS embedding
    X = model.embed(paths, pool="cls", progress=True)  # float32 [len(paths), 1024]

Results are numpy arrays over the library's own buffers (no copy); C-contiguous float32 pixel
values are read in place; the GIL is released while images are decoded, preprocessed and run
through the model, so threads sharing one Model run in parallel.
"""

import os as _os
import sys as _sys
import time as _time
from typing import Any as _Any
from typing import Iterable as _Iterable
from typing import NamedTuple as _NamedTuple
from typing import Tuple as _Tuple
from typing import Union as _Union

import numpy as _np

from . import _core
from ._core import (ArgumentError, Error, Features, IoError, LimitError, MalformedError, NotFoundError,
                    PermissionDeniedError, Preprocessor, UnsupportedError, convert, default_threads, image_file_extensions,
                    jpeg_decoder, kernel_isa)

__version__ = _core.__version__

# The type aliases of the stub (__init__.pyi), present at runtime for annotations in user code.
_Path = _Union[str, bytes, "_os.PathLike[str]", "_os.PathLike[bytes]"]
Input = _Union[_Path, _Any, _np.ndarray]
"""An image path, a PIL image, a uint8 array [H, W, 3] / [H, W], or float32 pixel values [3, H, W]."""
Size = _Union[None, int, _Tuple[int, int]]
"""The size images are resized to: None (the preprocessor's), an int (square) or (height, width)."""
Layers = _Union[bool, int, _Iterable[int]]
"""Layer indices: an int, an iterable of ints (negative from the end), True (all) or False (none)."""

__all__ = [
    "ArgumentError",
    "EmbedResult",
    "Error",
    "Features",
    "IoError",
    "LimitError",
    "MalformedError",
    "Model",
    "ModelOutput",
    "NotFoundError",
    "PermissionDeniedError",
    "Preprocessor",
    "UnsupportedError",
    "convert",
    "default_threads",
    "image_file_extensions",
    "jpeg_decoder",
    "kernel_isa",
    "__version__",
]


class EmbedResult(_NamedTuple):
    """What Model.embed(..., on_error="skip") returns (and what an interrupted or failed embed()
    leaves in the exception's .partial): the rows of the inputs that succeeded, in input order.

    embeddings: float32 [n, D], one row per input that succeeded; indices: int64 [n], the position
    in `inputs` of each row (embeddings[k] is inputs[indices[k]]); skipped: [(index, exception)] of
    the inputs that failed, in input order."""

    embeddings: _np.ndarray
    indices: _np.ndarray
    skipped: list


class ModelOutput(_NamedTuple):
    """What model(pixel_values, output_hidden_states=..., ...) returns: Hugging Face's
    BaseModelOutput fields as numpy arrays (also a tuple, in this order).

    last_hidden_state: float32 [B, N, D]; hidden_states: a tuple of num_hidden_layers + 1 arrays
    [B, N, D] (0 = embeddings, i = output of layer i) when output_hidden_states=True, else None;
    attentions: a tuple of num_hidden_layers arrays [B, heads, N, N] (softmax(Q K^T / sqrt(d)) per
    head) when output_attentions=True, else None."""

    last_hidden_state: _np.ndarray
    hidden_states: tuple | None
    attentions: tuple | None


class Model(_core.Model):
    __doc__ = _core.Model.__doc__

    def __call__(self, pixel_values, output_hidden_states=None, output_attentions=None, return_dict=None):
        """model(pixel_values): float32 [B, 3, H, W] (what ViTImageProcessor returns as numpy) ->
        last_hidden_state float32 [B, N, D], as Hugging Face's ViTMSNModel(pixel_values).last_hidden_state.
        C-contiguous float32 input is read in place; B == 1 returns the library's buffer itself, B > 1
        copies each image's rows into the one output array.

        With Hugging Face's keywords (any of output_hidden_states, output_attentions, return_dict
        given) it returns a vitmsn.ModelOutput instead: .last_hidden_state [B, N, D], .hidden_states
        (a tuple of num_hidden_layers + 1 arrays [B, N, D] when output_hidden_states=True, else None),
        .attentions (a tuple of num_hidden_layers arrays [B, heads, N, N] when output_attentions=True,
        else None; heads x N x N floats a layer and image: 67 MB on ViT-L/7 at 224x224, 1.6 GB for
        all 24 layers, as in Hugging Face — extract_features(x, attentions=[layer]) returns one layer,
        cls_attention=... the CLS rows alone). One forward pass per image computes all of them.
        return_dict=False is not supported. Other keywords are a TypeError, as for any Python function.
        """
        if return_dict is not None and not return_dict:
            raise NotImplementedError("return_dict=False: vitmsn returns a ModelOutput (also a tuple) or, "
                                      "without keywords, the last_hidden_state array")
        if not output_hidden_states and not output_attentions:
            last = super().__call__(pixel_values)
            if output_hidden_states is None and output_attentions is None and return_dict is None:
                return last
            return ModelOutput(last, None, None)
        x = _np.asarray(pixel_values)
        if x.ndim != 4 or x.shape[0] == 0:
            super().__call__(pixel_values)  # raises the error for this shape
        per_image = [self.extract_features(x[b], hidden_states=bool(output_hidden_states),
                                           attentions=bool(output_attentions)) for b in range(x.shape[0])]
        # One image: views of the library's arrays with a batch axis (no copy: the 24 maps of ViT-L/7
        # are 1.6 GB); several: stacked into one array each.
        def batch(arrays):
            return arrays[0][None] if len(arrays) == 1 else _np.stack(arrays)

        last = batch([f.last_hidden_state for f in per_image])

        def stacked(maps):
            return tuple(batch([m[i] for m in maps]) for i in sorted(maps[0]))

        hidden = stacked([f.hidden_states for f in per_image]) if output_hidden_states else None
        attentions = stacked([f.attentions for f in per_image]) if output_attentions else None
        return ModelOutput(last, hidden, attentions)

    def __reduce__(self):
        # By path and load options: the weights are loaded again on unpickling (multiprocessing).
        return (type(self), self._load_args)

    def extract_features(self, x, hidden_states=(), cls_attention=(), size=None, attentions=()):
        return super().extract_features(x, hidden_states, cls_attention, size, attentions)

    extract_features.__doc__ = _core.Model.extract_features.__doc__.split("\n", 1)[1].lstrip("\n")

    def logits(self, x):
        return super().logits(x)

    logits.__doc__ = _core.Model.logits.__doc__.split("\n", 1)[1].lstrip("\n")

    def classify(self, x, top=5):
        return super().classify(x, top)

    classify.__doc__ = _core.Model.classify.__doc__.split("\n", 1)[1].lstrip("\n")

    def embed(self, inputs, pool="cls", batch_size=1, progress=False, size=None, on_error="raise"):
        """Embeddings of many inputs as one float32 array [n, D].

        inputs: any iterable (a list, a generator, a DataLoader-like stream) of what
        extract_features() takes: image paths (str, bytes, os.PathLike), PIL images, uint8 arrays,
        float32 pixel values. It is consumed as it goes: batch_size inputs at a time are run and then
        dropped (memory holds one batch of inputs plus the output rows; PIL images are not kept).
        pool: "cls" (the CLS token) or "mean" (the mean of the patch tokens). batch_size: inputs per
        forward pass (batch 1 is as fast per image on ViT-L/7 and needs the least memory).
        progress: a progress bar on stderr (a redrawn line on a terminal; outside one a line per
        10 % and at least every 30 s; without len(inputs) it counts without a total). size:
        (height, width) or an int, the size images are resized to.

        on_error="raise" (default): the first input that fails raises its error again, of the same
        class, with " (embed: input <index>, <path or type>)" after the message (the original is its
        __cause__); returns float32 [len(inputs), D], row i for inputs[i].
        on_error="skip": inputs that fail (vitmsn.Error, Pillow's OSError, a wrong type, ...) are
        left out; returns an EmbedResult (embeddings [n, D], indices [n], skipped [(index, error)]).

        Ctrl-C (KeyboardInterrupt) stops between images (and between batches); the exception then
        carries .partial, an EmbedResult of what was done. A raised input error carries .partial too.
        """
        if pool not in ("cls", "mean"):
            raise ArgumentError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if on_error not in ("raise", "skip"):
            raise ArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(inputs, (str, bytes, _os.PathLike)) or not hasattr(inputs, "__iter__"):
            raise TypeError("embed() takes an iterable of inputs (paths, images, arrays); for one input use "
                            "extract_features()")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be at least 1, got {batch_size}")
        d = self.config["hidden_size"]
        self._embed_into(_np.empty((0, d), _np.float32), [], pool, size)  # checks size before any input
        try:
            total = len(inputs)
        except TypeError:
            total = None
        rows, indices, skipped = [], [], []
        batch, batch_indices = [], []

        def partial():
            emb = _np.concatenate(rows) if rows else _np.empty((0, d), _np.float32)
            return EmbedResult(emb, _np.asarray(indices, dtype=_np.int64), list(skipped))

        def failed(index, x, error):
            if on_error == "skip":
                skipped.append((index, error))
                return
            raise _with_input(error, index, x, partial())

        def run(xs, ids):
            out = _np.empty((len(xs), d), _np.float32)
            self._embed_into(out, xs, pool, size)
            rows.append(out)
            indices.extend(ids)

        def flush():
            try:
                run(batch, batch_indices)
            except Exception as error:  # find the failing inputs one by one (a batch is a few inputs)
                if len(batch) == 1:
                    failed(batch_indices[0], batch[0], error)
                else:
                    for x, i in zip(batch, batch_indices):
                        try:
                            run([x], [i])
                        except Exception as e:
                            failed(i, x, e)
            batch.clear()
            batch_indices.clear()

        bar = _Progress(total) if progress else None
        count = 0
        try:
            for index, x in enumerate(inputs):
                batch.append(x)
                batch_indices.append(index)
                del x
                if len(batch) == batch_size:
                    flush()
                    count = index + 1
                    if bar:
                        bar.update(count)
            if batch:
                count += len(batch)
                flush()
                if bar:
                    bar.update(count)
        except KeyboardInterrupt as interrupt:
            interrupt.partial = partial()
            raise
        finally:
            batch.clear()
            if bar:
                bar.close()
        if on_error == "skip":
            return partial()
        return partial().embeddings if len(rows) != 1 else rows[0]


def _describe(x):
    if isinstance(x, (str, bytes, _os.PathLike)):
        try:
            return repr(_os.fsdecode(x))
        except TypeError:
            pass
    return type(x).__name__


def _with_input(error, index, x, partial):
    """`error` again, of the same class, its message naming the input (index, path or type)."""
    message = f"{error} (embed: input {index}, {_describe(x)})"
    try:
        new = type(error)(message)
    except Exception:
        error.add_note(message) if hasattr(error, "add_note") else None
        error.partial = partial
        return error
    if isinstance(error, Error):
        new.__dict__.update(error.__dict__)
        if isinstance(error, OSError):
            new.errno, new.strerror, new.filename = error.errno, error.strerror, error.filename
    new.partial = partial
    new.__cause__ = error
    return new


# The clock of the progress lines (a test replaces it to see the lines "every 30 s" without waiting).
_clock = _time.monotonic


class _Progress:
    """A progress line on stderr: redrawn in place on a terminal; otherwise a line per 10 % and at least
    every `every` seconds (without a total: a count, a line every `every` seconds and at the end)."""

    def __init__(self, total, stream=None, every=30.0):
        self.total, self.done, self.start = total, 0, _clock()
        self.stream = stream or _sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_tenth, self.every, self.last_line, self.printed = 0, every, self.start, 0
        self._draw()

    def _line(self):
        elapsed = _clock() - self.start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        if self.total is None:
            return f"{self.done} images  {rate:.2f}/s"
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 30
        filled = width * self.done // self.total if self.total else width
        eta = f"{int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d}"
        return f"[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} images  {rate:.2f}/s  ETA {eta}"

    def _draw(self):
        if self.tty:
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def update(self, done):
        self.done = done
        if self.tty:
            self._draw()
            return
        now = _clock()
        tenth = 10 * done // self.total if self.total else 0
        if tenth > self.last_tenth or now - self.last_line >= self.every:
            self.last_tenth = max(self.last_tenth, tenth)
            self._print()

    def _print(self):
        self.last_line, self.printed = _clock(), self.done
        self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self.done != self.printed:  # the last count, when no line showed it
            self._print()
