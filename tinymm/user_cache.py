"""The user's cache directory for tinymm: TensorRT engines and extracted bundle archives live under it.

``$TINYMM_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/tinymm`` when that is an absolute path (the
XDG spec ignores relative ones), else ``~/.cache/tinymm``. Nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

CACHE_DIR_ENV = "TINYMM_CACHE_DIR"  # the cache root itself
XDG_CACHE_ENV = "XDG_CACHE_HOME"  # the user's cache directory; the root is a "tinymm" folder in it
CACHE_APP_DIRNAME = "tinymm"
FALLBACK_CACHE_DIR = Path("~") / ".cache"  # the user's cache directory when XDG_CACHE_HOME is not set


def user_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The root of tinymm's caches (see the module docstring). environ: default os.environ."""
    env = os.environ if environ is None else environ
    explicit = env.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get(XDG_CACHE_ENV, "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else FALLBACK_CACHE_DIR.expanduser()
    return base / CACHE_APP_DIRNAME
