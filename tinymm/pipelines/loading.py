"""``load``: a bundle (path or default name) in, the pipeline of its family out.

    import tinymm
    vlm = tinymm.load("bundles/scene-vlm")                 # a directory or .tar/.tar.gz archive
    vlm.caption("photo.jpg").text
    asr = tinymm.load("speech-commands", precision="int8")  # a default bundle shipped with tinymm

A name that is not an existing path is looked up among the default bundles shipped in
``tinymm/assets/bundles/<name>`` (a directory or an archive). ``precision="auto"`` takes, per
component, int8 on the CPU and fp16 on GPU providers when the bundle has that variant, else fp32.
An explicit precision that a component lacks falls back to fp32 for that component, with a
warning; if no component has it, that is a BundleError.

This module also opens the sessions and the tokenizer of a bundle for the pipelines'
``from_bundle`` constructors, and declares the loading flags every task subcommand shares.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tinymm.bundle.archive import ARCHIVE_SUFFIXES
from tinymm.bundle.constants import PRECISIONS
from tinymm.bundle.errors import BundleNotFoundError
from tinymm.errors import BundleError

if TYPE_CHECKING:  # the backends import numpy: loaded when a bundle is, not for `tinymm --help`
    from tinymm.backends.base import BackendOptions, Session
    from tinymm.bundle import Bundle
    from tinymm.pipelines.speech import SpeechPipeline
    from tinymm.pipelines.vision_language import VisionLanguagePipeline
    from tinymm.preprocess.text import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "bundles"
DEFAULT_VISION_BUNDLE = "scene-vlm"  # the vision-language bundle the task subcommands use by default
DEFAULT_SPEECH_BUNDLE = "speech-commands"  # the speech bundle they use by default
PRECISION_CHOICES = ("auto", *PRECISIONS)
# precision "auto": the variants tried, best first, on a CPU and on a GPU provider.
AUTO_PRECISIONS = {"cpu": ("int8", "fp32"), "gpu": ("fp16", "fp32")}
FALLBACK_PRECISION = "fp32"
PIPELINE_FAMILIES = ("vision-language", "speech")  # bundle families that load() builds a pipeline for


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


@dataclass(frozen=True)
class LoadOptions:
    """How a bundle's models are loaded; a bad value is a ValueError."""

    backend: str = "onnxruntime"  # a name known to tinymm.backends.get_backend
    provider: str = "auto"  # auto | cpu | cuda | tensorrt
    precision: str = "auto"  # auto | fp32 | fp16 | int8
    threads: int = 0  # intra-op threads per model; 0 = the backend's default
    verify_checksums: bool = True  # hash every bundle file on load (sizes are always checked)

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

    def backend_options(self) -> BackendOptions:
        from tinymm.backends.base import BackendOptions

        return BackendOptions(provider=self.provider, intra_op_threads=self.threads)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, default_bundle: str, bundle_flag: str = "--bundle") -> None:
        """Add ``--bundle`` (or ``bundle_flag``), ``--backend``, ``--provider``, ``--precision``, ``--threads``."""
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
        parser.add_argument(
            "--precision", default="auto", choices=PRECISION_CHOICES,
            help="model variant (auto: int8 on CPU, fp16 on GPU, when the bundle has it)",
        )
        parser.add_argument(
            "--threads", type=_thread_count, default=0, help="threads per model (0: the backend's default)"
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoadOptions:
        """The options of parsed ``add_arguments`` flags (argparse already checked each value)."""
        return cls(backend=args.backend, provider=args.provider, precision=args.precision, threads=args.threads)


def default_bundle_names() -> tuple[str, ...]:
    """Names of the default bundles shipped in tinymm/assets/bundles (none until they are trained)."""
    if not DEFAULT_BUNDLES_DIR.is_dir():
        return ()
    names = set()
    for entry in DEFAULT_BUNDLES_DIR.iterdir():
        suffix = next((s for s in ARCHIVE_SUFFIXES if entry.name.endswith(s)), None)
        if suffix is not None and entry.is_file():
            names.add(entry.name[: -len(suffix)])
        elif entry.is_dir() and not entry.name.startswith("."):
            names.add(entry.name)
    return tuple(sorted(names))


def resolve_bundle(name_or_path: str | Path) -> Path:
    """The path of a bundle given as a path, or as the name of a default bundle."""
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path)
    is_name = isinstance(name_or_path, str) and "/" not in text and "\\" not in text and not text.startswith(".")
    if is_name and text:
        for candidate in (DEFAULT_BUNDLES_DIR / text, *(DEFAULT_BUNDLES_DIR / f"{text}{s}" for s in ARCHIVE_SUFFIXES)):
            if candidate.exists():
                return candidate
        names = default_bundle_names()
        shipped = ", ".join(names) if names else (
            f"none in {DEFAULT_BUNDLES_DIR} (a source checkout builds them with scripts/make_default_bundles.py)")
        raise BundleNotFoundError(
            f"bundle {text!r} is neither an existing path nor a default bundle; default bundles: {shipped}. "
            "Pass a bundle directory or archive, e.g. --bundle path/to/bundle (make one with python -m export)"
        )
    raise BundleNotFoundError(
        f"bundle {str(path)!r} does not exist; give a bundle directory (holding manifest.json) or a bundle "
        f"archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )


def choose_precision(available: Sequence[str], requested: str, provider: str) -> str:
    """The variant to load among ``available`` for ``requested`` on ``provider`` (cpu, cuda, tensorrt)."""
    from tinymm.backends.base import GPU_PROVIDERS

    if requested == "auto":
        preferred = AUTO_PRECISIONS["gpu" if provider in GPU_PROVIDERS else "cpu"]
        return next((p for p in preferred if p in available), available[0])
    if requested in available:
        return requested
    return FALLBACK_PRECISION if FALLBACK_PRECISION in available else available[0]


def _resolved_provider(backend: Any, requested: str) -> str:
    if requested != "auto":
        return requested
    available = backend.available_providers()
    return available[0] if available else "cpu"


def open_sessions(
    bundle: Bundle, required: Sequence[str], optional: Sequence[str], options: LoadOptions
) -> dict[str, Session]:
    """Sessions for the ``required`` components and those of ``optional`` the bundle has."""
    from tinymm.backends.base import get_backend

    manifest = bundle.manifest
    missing = [name for name in required if name not in manifest.components]
    if missing:
        raise BundleError(
            f"bundle {manifest.name!r} ({manifest.family}) has no component(s) {missing}; it has "
            f"{sorted(manifest.components)}. Re-export it with python -m export (layout: export/LAYOUT.md)"
        )
    names = [*required, *(name for name in optional if name in manifest.components)]
    backend = get_backend(options.backend)
    provider = _resolved_provider(backend, options.provider)
    chosen = {name: choose_precision(manifest.components[name].precisions, options.precision, provider) for name in names}
    if options.precision != "auto":
        lacking = [name for name, precision in chosen.items() if precision != options.precision]
        if len(lacking) == len(names):
            raise BundleError(
                f"bundle {manifest.name!r} has no {options.precision} variant of any component; its variants "
                f"are {sorted({p for n in names for p in manifest.components[n].precisions})}. Use --precision auto"
            )
        for name in lacking:
            logger.warning("%s has no %s variant; loading %s", name, options.precision, chosen[name])
    backend_options = options.backend_options()
    sessions = {}
    for name in names:
        path = bundle.checked_component_path(name, chosen[name])
        sessions[name] = backend.load(path, backend_options)
        logger.info("%s: %s on %s", name, chosen[name], sessions[name].provider)
    return sessions


def bundle_tokenizer(bundle: Bundle) -> Tokenizer:
    """The bundle's Tokenizer; BundleError when its manifest has no text contract."""
    from tinymm.preprocess.text import Tokenizer

    text = bundle.manifest.preprocess.text
    if text is None or bundle.tokenizer_path is None:
        raise BundleError(
            f"bundle {bundle.name!r} has no preprocess.text section (tokenizer and special ids); re-export it"
        )
    return Tokenizer(bundle.tokenizer_path, text)


def load(
    name_or_path: str | Path,
    backend: str = "onnxruntime",
    provider: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    *,
    verify_checksums: bool = True,
    family: str | None = None,
) -> VisionLanguagePipeline | SpeechPipeline:
    """Read a bundle and return the pipeline of its family, with its models loaded.

    Args:
        name_or_path: a bundle directory, a .tar/.tar.gz/.tgz archive, or a default bundle name.
        backend: "onnxruntime" (or another name tinymm.backends knows).
        provider: "auto" (TensorRT > CUDA > CPU, as available), "cpu", "cuda" or "tensorrt".
        precision: "auto", "fp32", "fp16" or "int8" (see the module docstring).
        threads: intra-op threads per model; 0 leaves the backend's default.
        verify_checksums: hash every file against the manifest (sizes are checked anyway).
        family: when given, the family the bundle must be ("vision-language" or "speech"),
            checked before any model is loaded.

    Returns:
        A VisionLanguagePipeline (family "vision-language") or a SpeechPipeline ("speech").

    Raises:
        BundleError: no such bundle, an invalid or corrupt one, or a family without a pipeline.
        BackendError: the backend or provider is unavailable, or a model fails to load.
        ValueError: an argument outside the choices listed above.
    """
    from tinymm.bundle import read_bundle

    options = LoadOptions(backend, provider, precision, threads, verify_checksums)
    # Only the variants that open_sessions loads are scanned (the scan dominates reading a bundle).
    bundle = read_bundle(resolve_bundle(name_or_path), verify_checksums=options.verify_checksums, scan_models=False)
    actual = bundle.manifest.family
    wanted = (family,) if family is not None else PIPELINE_FAMILIES
    if actual not in wanted:
        bundle.close()
        raise BundleError(
            f"bundle {bundle.name!r} ({str(name_or_path)!r}) is a {actual} bundle, but a {' or '.join(wanted)} "
            "bundle is needed here; pass the right one (e.g. --bundle PATH; tinymm info describes a bundle)"
        )
    try:
        if actual == "vision-language":
            from tinymm.pipelines.vision_language import VisionLanguagePipeline

            return VisionLanguagePipeline.from_bundle(bundle, options)
        from tinymm.pipelines.speech import SpeechPipeline

        return SpeechPipeline.from_bundle(bundle, options)
    except BaseException:
        bundle.close()  # removes the directory an archive was extracted to
        raise


def load_with(name_or_path: str | Path, options: LoadOptions, family: str | None = None) -> Any:
    """``load`` with a LoadOptions (as the task subcommands build it from their flags)."""
    return load(
        name_or_path, options.backend, options.provider, options.precision, options.threads,
        verify_checksums=options.verify_checksums, family=family,
    )
