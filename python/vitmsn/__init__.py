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

import sys as _sys
import time as _time

import numpy as _np

from . import _core
from ._core import (ArgumentError, Error, Features, IoError, LimitError, MalformedError, NotFoundError,
                    PermissionDeniedError, Preprocessor, UnsupportedError, default_threads, image_file_extensions,
                    jpeg_decoder, kernel_isa)

__version__ = _core.__version__

__all__ = [
    "ArgumentError",
    "Error",
    "Features",
    "IoError",
    "LimitError",
    "MalformedError",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "Preprocessor",
    "UnsupportedError",
    "default_threads",
    "image_file_extensions",
    "jpeg_decoder",
    "kernel_isa",
    "__version__",
]


class Model(_core.Model):
    __doc__ = _core.Model.__doc__

    def embed(self, inputs, pool="cls", batch_size=1, progress=False, size=None):
        """Embeddings of many inputs as one float32 array [len(inputs), D].

        inputs: a sequence (or iterable) of what extract_features() takes: image paths, PIL images,
        uint8 arrays, float32 pixel values. pool: "cls" (the CLS token) or "mean" (the mean of the
        patch tokens). batch_size: inputs per forward pass (a batch runs one matrix product per
        weight for all its images; batch 1 is as fast per image on ViT-L/7 and needs the least
        memory). progress: draw a progress bar on stderr (a redrawn line on a terminal, a line per
        10 % otherwise). size: (height, width) or an int, the size images are resized to.

        Raises vitmsn.Error naming the input that failed (nothing is returned then). Ctrl-C stops
        after the current batch.
        """
        if pool not in ("cls", "mean"):
            raise ArgumentError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__iter__"):
            raise TypeError("embed() takes a sequence of inputs (paths, images, arrays); for one input use "
                            "extract_features()")
        inputs = list(inputs)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be at least 1, got {batch_size}")
        out = _np.empty((len(inputs), self.config["hidden_size"]), dtype=_np.float32)
        bar = _Progress(len(inputs)) if progress else None
        try:
            for start in range(0, len(inputs), batch_size):
                stop = min(len(inputs), start + batch_size)
                self._embed_into(out[start:stop], inputs[start:stop], pool, size)
                if bar:
                    bar.update(stop)
        finally:
            if bar:
                bar.close()
        return out


class _Progress:
    """A progress line on stderr: redrawn in place on a terminal, one line per 10 % otherwise."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.start = total, 0, _time.monotonic()
        self.stream = stream or _sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_tenth = 0
        self._draw()

    def _line(self):
        elapsed = _time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
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
        elif self.total and 10 * done // self.total > self.last_tenth:
            self.last_tenth = 10 * done // self.total
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
