"""The loading flags every task subcommand shares, and ``LoadOptions``, the options they make.

    options = LoadOptions(provider="cpu", precision="int8", threads=2)   # checked once, frozen
    LoadOptions.add_arguments(parser, default_bundle="scene-vlm")        # --bundle, --backend, ...
    options = LoadOptions.from_args(parser.parse_args())

This module imports nothing heavier than argparse: the CLI declares its flags from it without
numpy, OpenCV or onnxruntime (the backends are imported when a value is checked).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinymm.bundle.constants import PRECISIONS

if TYPE_CHECKING:
    from tinymm.backends.base import BackendOptions

PRECISION_CHOICES = ("auto", *PRECISIONS)
# Largest batch a TensorRT engine accepts: images x beams, or the labels of one classify call
# (the default scene labels are 63). Engines are tuned for batch 1.
DEFAULT_MAX_BATCH = 64


def _backend_name(text: str) -> str:
    """argparse type of --backend: a name tinymm.backends knows (checked when the flags are parsed)."""
    from tinymm.backends.base import known_backends

    if text not in known_backends():
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}; choose from {list(known_backends())}")
    return text


def _provider_name(text: str) -> str:
    """argparse type of --provider."""
    from tinymm.backends.base import PROVIDERS

    if text not in PROVIDERS:
        raise argparse.ArgumentTypeError(f"unknown provider {text!r}; choose from {list(PROVIDERS)}")
    return text


def _thread_count(text: str) -> int:
    """argparse type of --threads: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count; give an integer >= 0 (0: default)")
    return value


def _cache_dir(text: str) -> Path:
    """argparse type of --cache-dir: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--cache-dir is empty; give a directory, or --no-engine-cache")
    return Path(text)


@dataclass(frozen=True)
class LoadOptions:
    """How a bundle's models are loaded; a bad value is a ValueError."""

    backend: str = "onnxruntime"  # a name known to tinymm.backends.get_backend
    provider: str = "auto"  # auto | cpu | cuda | tensorrt
    precision: str = "auto"  # auto | fp32 | fp16 | int8
    threads: int = 0  # intra-op threads per model; 0 = the backend's default
    verify_checksums: bool = True  # hash every bundle file on load (sizes are always checked)
    # TensorRT only: the root of the engine caches (None: $TINYMM_CACHE_DIR, $XDG_CACHE_HOME/tinymm
    # or ~/.cache/tinymm); each bundle gets a directory in it.
    cache_dir: Path | None = None
    engine_cache: bool = True  # TensorRT only: False builds the engines at every load, writing nothing
    max_batch: int = DEFAULT_MAX_BATCH  # TensorRT only: the largest batch the engines accept

    def __post_init__(self) -> None:
        from tinymm.backends.base import PROVIDERS, known_backends

        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError(f"backend={self.backend!r} must be a backend name, one of {list(known_backends())}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider={self.provider!r} is not one of {list(PROVIDERS)}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision={self.precision!r} is not one of {list(PRECISION_CHOICES)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 0 (0 = the backend's default)")
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)) or not str(self.cache_dir).strip():
                raise ValueError(f"cache_dir={self.cache_dir!r} must be a directory path, or None for the default")
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if not isinstance(self.engine_cache, bool):
            raise ValueError(f"engine_cache={self.engine_cache!r} must be True or False")
        if self.cache_dir is not None and not self.engine_cache:
            raise ValueError(
                f"cache_dir={str(self.cache_dir)!r} was given with engine_cache=False; give one or the other"
            )
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch!r} must be an integer >= 1")

    def backend_options(self) -> BackendOptions:
        """The options every component is loaded with (TensorRT ones are added per component)."""
        from tinymm.backends.base import BackendOptions

        return BackendOptions(provider=self.provider, intra_op_threads=self.threads)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, default_bundle: str, bundle_flag: str = "--bundle") -> None:
        """Add ``--bundle`` (or ``bundle_flag``), ``--backend``, ``--provider``, ``--cache-dir``,
        ``--no-engine-cache``, ``--precision`` and ``--threads``."""
        parser.add_argument(
            bundle_flag, default=default_bundle, metavar="BUNDLE",
            help=f"bundle directory, archive, or default bundle name (default: {default_bundle})",
        )
        if any(action.dest == "backend" for action in parser._actions):
            return  # a second bundle flag shares the loading flags
        parser.add_argument("--backend", default="onnxruntime", type=_backend_name, help="inference backend (onnxruntime)")
        parser.add_argument(
            "--provider", default="auto", type=_provider_name, help="auto (best available) | cpu | cuda | tensorrt"
        )
        LoadOptions.add_cache_arguments(parser)
        parser.add_argument(
            "--precision", default="auto", choices=PRECISION_CHOICES,
            help="model variant (auto: int8 on CPU, fp16 on GPU, when the bundle has it)",
        )
        parser.add_argument(
            "--threads", type=_thread_count, default=0, help="threads per model (0: the backend's default)"
        )

    @staticmethod
    def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
        """Add ``--cache-dir`` and ``--no-engine-cache`` (TensorRT engine cache), one or the other."""
        cache = parser.add_mutually_exclusive_group()
        cache.add_argument(
            "--cache-dir", type=_cache_dir, default=None, metavar="DIR",
            help="where TensorRT engines are cached, one directory per bundle (default: $TINYMM_CACHE_DIR, "
            "$XDG_CACHE_HOME/tinymm or ~/.cache/tinymm)",
        )
        cache.add_argument(
            "--no-engine-cache", dest="engine_cache", action="store_false",
            help="build the TensorRT engines at every load and write nothing",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoadOptions:
        """The options of parsed ``add_arguments`` flags (argparse already checked each value)."""
        return cls(
            backend=args.backend, provider=args.provider, precision=args.precision, threads=args.threads,
            cache_dir=args.cache_dir, engine_cache=args.engine_cache,
        )
