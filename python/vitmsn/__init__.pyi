# Type stub of the Python module vitmsn (python/vitmsn/__init__.py over the extension _core).
# tests/python/test_api.py checks that it names exactly what the module has, with the same parameters.
import os
from typing import Any, Iterable, Literal, NamedTuple, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

# A PIL.Image.Image (Any: Pillow is optional and ships no stubs of its own in Debian).
_PILImage = Any

__version__: str

_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Array = npt.NDArray[Any]
Input = Union[_Path, _PILImage, _Array]
"""An image path, a PIL image, a uint8 array [H, W, 3] / [H, W], or float32 pixel values [3, H, W]."""
Size = Union[None, int, Tuple[int, int]]
Layers = Union[bool, int, Iterable[int]]

class Error(ValueError):
    """Bad input: the library's message names the culprit and the problem."""
    kind: str | None
    """The kind as a string ("not_found", "permission", "io", "malformed", "unsupported", "limit",
    "argument"); None on Error itself."""
    path: str | None
    """The file the error is about, or None."""

class NotFoundError(Error, FileNotFoundError):
    """A path that does not exist (or a model folder without its weights)."""

class PermissionDeniedError(Error, PermissionError):
    """The operating system refused access to a path."""

class IoError(Error, OSError):
    """Another operating-system error reading, writing or mapping a file; a model file changed on disk."""

class MalformedError(Error):
    """Content that breaks its format: a bad header, a truncated file, invalid JSON, a bad tensor."""

class UnsupportedError(Error):
    """Well-formed content vitmsn does not read: a dtype, a format or version."""

class LimitError(Error):
    """A size over a limit (image pixels, header bytes, tensor counts, input tokens)."""

class ArgumentError(Error):
    """A bad argument or option value: a wrong array shape, an index out of range."""

class EmbedResult(NamedTuple):
    """Model.embed(..., on_error="skip"): the rows of the inputs that succeeded, in input order."""
    embeddings: npt.NDArray[np.float32]
    """float32 [n, D]: one row per input that succeeded."""
    indices: npt.NDArray[np.int64]
    """int64 [n]: the position in the inputs of each row."""
    skipped: list[tuple[int, BaseException]]
    """(index, error) of each input that failed."""

class ModelOutput(NamedTuple):
    """model(pixel_values, output_hidden_states=...): Hugging Face's BaseModelOutput fields."""
    last_hidden_state: npt.NDArray[np.float32]
    """float32 [B, N, D]."""
    hidden_states: tuple[npt.NDArray[np.float32], ...] | None
    """num_hidden_layers + 1 arrays [B, N, D] with output_hidden_states=True, else None."""
    attentions: tuple[npt.NDArray[np.float32], ...] | None
    """num_hidden_layers arrays [B, heads, N, N] with output_attentions=True, else None."""

class Features:
    """What a forward pass returns; the arrays are views of the library's buffers."""
    @property
    def last_hidden_state(self) -> npt.NDArray[np.float32]: ...
    @property
    def cls(self) -> npt.NDArray[np.float32]: ...
    @property
    def mean_patch(self) -> npt.NDArray[np.float32]: ...
    @property
    def hidden_states(self) -> dict[int, npt.NDArray[np.float32]]: ...
    @property
    def cls_attention(self) -> dict[int, npt.NDArray[np.float32]]: ...
    @property
    def attentions(self) -> dict[int, npt.NDArray[np.float32]]: ...

class Preprocessor:
    """Hugging Face's ViTImageProcessor (PIL path), bit for bit."""
    def __init__(self, source: Union[None, Model, _Path] = None) -> None: ...
    def __call__(self, image: Input, size: Size = None) -> npt.NDArray[np.float32]: ...
    def resize(self, image: Input, size: Size = None) -> npt.NDArray[np.uint8]: ...
    def with_size(self, height: int, width: int) -> Preprocessor: ...
    @property
    def config(self) -> dict[str, Any]: ...

class Model:
    """A ViT-MSN model: a folder or a single .safetensors file."""
    def __init__(
        self, path: _Path, threads: int | None = None, copy_weights: bool = False, compute: str = "auto"
    ) -> None: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def has_classifier(self) -> bool: ...
    @property
    def kernel_isa(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def compute(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def backbone(self) -> str: ...
    @property
    def preprocessor(self) -> Preprocessor: ...
    def extract_features(
        self, x: Input, hidden_states: Layers = (), cls_attention: Layers = (), size: Size = None,
        attentions: Layers = ()
    ) -> Features: ...
    @overload
    def __call__(  # type: ignore[misc]
        self, pixel_values: _Array, output_hidden_states: None = None, output_attentions: None = None,
        return_dict: None = None
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def __call__(
        self, pixel_values: _Array, output_hidden_states: bool | None = None, output_attentions: bool | None = None,
        return_dict: bool | None = None
    ) -> ModelOutput: ...
    @overload
    def embed(
        self,
        inputs: Iterable[Input],
        pool: str = "cls",
        batch_size: int = 1,
        progress: bool = False,
        size: Size = None,
        on_error: Literal["raise"] = "raise",
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self,
        inputs: Iterable[Input],
        pool: str = "cls",
        batch_size: int = 1,
        progress: bool = False,
        size: Size = None,
        *,
        on_error: Literal["skip"],
    ) -> EmbedResult: ...
    def classify(self, x: Input, top: int | None = 5) -> list[tuple[str, float]]: ...
    def logits(self, x: Union[Input, Features]) -> npt.NDArray[np.float32]: ...

def kernel_isa() -> str: ...
def convert(
    input: _Path,
    output: _Path,
    dtype: str = "f32",
    classifier: _Path | None = None,
    overwrite: bool = False,
    allow_other_backbone: bool = False,
    layout: str = "rows",
) -> dict[str, Any]: ...
def default_threads() -> int: ...
def image_file_extensions() -> list[str]: ...
def jpeg_decoder() -> str: ...
