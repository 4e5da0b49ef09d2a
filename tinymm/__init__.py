"""tinymm: an edge-deployable compact multimodal runtime.

Importing this package is cheap: it pulls in no numpy, OpenCV, onnxruntime or sentencepiece until
a function that needs them is called, and never imports torch. ``tinymm.load`` is resolved on
first use (PEP 562).

    import tinymm
    vlm = tinymm.load("path/to/bundle")   # the pipeline of the bundle's family
    print(vlm.caption("photo.jpg").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from tinymm.errors import BackendError, BundleError, InputError, TinymmError
from tinymm.lazy_exports import lazy_attributes

if TYPE_CHECKING:
    from tinymm.pipelines.loading import load

__all__ = ["BackendError", "BundleError", "InputError", "TinymmError", "__version__", "load"]

_LAZY = {"load": "pipelines.loading"}  # name -> the submodule that defines it, imported on first use
__getattr__, _lazy_dir = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_lazy_dir()})
