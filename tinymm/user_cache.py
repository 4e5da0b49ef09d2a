"""The user's cache directory for tinymm: TensorRT engines and extracted bundle archives live under it.

``user_dir`` is the lookup of a per-user directory (an environment variable, else an XDG base
directory, else a fallback); the user's bundle directory (tinymm.bundle.names) uses it too.

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


def user_dir(explicit_env: str, xdg_env: str, fallback: Path, subdir: Path | str,
             environ: Mapping[str, str] | None = None) -> Path:
    """A per-user directory of tinymm (nothing is created); environ: default os.environ.

    ``$explicit_env`` when set, else ``$xdg_env/subdir`` when that is an absolute path (the XDG
    spec ignores relative ones), else ``fallback/subdir`` (``~`` expanded).
    """
    env = os.environ if environ is None else environ
    explicit = env.get(explicit_env, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get(xdg_env, "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else fallback.expanduser()
    return base / subdir


def user_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The root of tinymm's caches (see the module docstring). environ: default os.environ."""
    return user_dir(CACHE_DIR_ENV, XDG_CACHE_ENV, FALLBACK_CACHE_DIR, CACHE_APP_DIRNAME, environ)
