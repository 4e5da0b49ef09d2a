"""tinymm: an edge-deployable compact multimodal runtime.

Importing this package is cheap: it pulls in no numpy, OpenCV, onnxruntime or sentencepiece until
a function that needs them is called, and never imports torch. ``tinymm.load`` is resolved on
first use (PEP 562).

    import tinymm
    vlm = tinymm.load("path/to/bundle")   # the pipeline of the bundle's family
    print(vlm.caption("photo.jpg").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from tinymm.errors import BackendError, BundleError, InputError, TinymmError

if TYPE_CHECKING:
    from tinymm.pipelines.loading import load

__all__ = ["BackendError", "BundleError", "InputError", "TinymmError", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from tinymm.pipelines.loading import load

        return load
    raise AttributeError(f"module 'tinymm' has no attribute {name!r}")
