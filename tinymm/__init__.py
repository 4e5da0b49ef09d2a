"""tinymm: an edge-deployable compact multimodal runtime.

Importing this package is cheap: it pulls in no OpenCV, onnxruntime or sentencepiece until a
function that needs them is called, and never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tinymm.errors import BackendError, BundleError, InputError, TinymmError

__all__ = ["__version__", "TinymmError", "BundleError", "InputError", "BackendError"]
