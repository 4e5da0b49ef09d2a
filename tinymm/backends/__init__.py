"""Inference backends behind one small seam; see `base` for the protocol.

Backends are imported lazily by name (`get_backend("onnxruntime")`), so importing this package
pulls in no inference library.
"""

from __future__ import annotations

from tinymm.backends.base import (
    Backend,
    BackendOptions,
    Session,
    TensorSpec,
    check_feeds,
    check_signatures,
    get_backend,
    known_backends,
)

__all__ = [
    "Backend",
    "BackendOptions",
    "Session",
    "TensorSpec",
    "check_feeds",
    "check_signatures",
    "get_backend",
    "known_backends",
]
