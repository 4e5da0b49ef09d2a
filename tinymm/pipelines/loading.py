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

On the TensorRT provider each component gets an optimization profile computed from the bundle
contract (batch 1..max_batch, "seq" and "past" 1..text.context_length, "frames"
1..model.max_frames, "new" 1; ``engine_cache.compute_profiles``, as ``export/tensorrt_build.py``
uses) and an engine cache directory: ``<root>/<bundle name>-<manifest hash>``, where root is
``cache_dir``, else ``$TINYMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinymm``, else
``~/.cache/tinymm``. The manifest hash (it covers every file's sha256) keeps bundles of the same
name, or a re-exported bundle, from sharing engines, and lets an archive extracted to a new
temporary directory at every load reuse its engines. The first load builds the engines (minutes
on a Jetson); later loads read them. The directory is created only when TensorRT is used.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tinymm.bundle.archive import ARCHIVE_SUFFIXES
from tinymm.bundle.constants import PRECISIONS
from tinymm.bundle.errors import BundleNotFoundError
from tinymm.errors import BundleError, InputError

if TYPE_CHECKING:  # the backends import numpy: loaded when a bundle is, not for `tinymm --help`
    from tinymm.backends.base import BackendOptions, Session
    from tinymm.backends.engine_cache import InputProfile, ShapeLimits
    from tinymm.bundle import Bundle, Manifest
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
# Where TensorRT engines are cached: the first of these environment variables that is set.
CACHE_DIR_ENV = "TINYMM_CACHE_DIR"  # the cache root itself
XDG_CACHE_ENV = "XDG_CACHE_HOME"  # the user's cache directory; the root is a "tinymm" folder in it
CACHE_APP_DIRNAME = "tinymm"
FALLBACK_CACHE_DIR = Path("~") / ".cache"  # the user's cache directory when XDG_CACHE_HOME is not set
BUNDLE_HASH_HEX_CHARS = 12  # of the manifest's sha256, in a bundle's cache directory name
# Largest batch a TensorRT engine accepts: images x beams, or the labels of one classify call
# (the default scene labels are 63). Engines are tuned for batch 1.
DEFAULT_MAX_BATCH = 64
CONTEXT_DIMS = ("seq", "past")  # dynamic dimensions bounded by the decoder context


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
            help=f"where TensorRT engines are cached, one directory per bundle (default: ${CACHE_DIR_ENV}, "
            f"${XDG_CACHE_ENV}/tinymm or ~/.cache/tinymm)",
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


def resolved_provider(backend: Any, requested: str) -> str:
    """The provider ``requested`` names, or for auto the backend's first available one (cpu when none)."""
    if requested != "auto":
        return requested
    available = backend.available_providers()
    return available[0] if available else "cpu"


def engine_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The default root of the TensorRT engine caches (nothing is created).

    ``$TINYMM_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/tinymm`` when that is an absolute path
    (the XDG spec ignores relative ones), else ``~/.cache/tinymm``. environ: default os.environ.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get(XDG_CACHE_ENV, "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else FALLBACK_CACHE_DIR.expanduser()
    return base / CACHE_APP_DIRNAME


def bundle_cache_dirname(manifest: Manifest) -> str:
    """``<bundle name>-<first BUNDLE_HASH_HEX_CHARS hex digits of the manifest's sha256>``.

    The manifest lists every file's sha256, so its hash changes with any weight, while the path
    the bundle was read from plays no part.
    """
    digest = hashlib.sha256(manifest.to_json().encode("utf-8")).hexdigest()[:BUNDLE_HASH_HEX_CHARS]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.name).strip(".-") or "bundle"
    return f"{name}-{digest}"


def engine_cache_dir(manifest: Manifest, options: LoadOptions, environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory of this bundle's TensorRT engines under ``options``, or None when caching is off.

    Pure: the directory is created by the backend when a TensorRT session is made.
    """
    if not options.engine_cache:
        return None
    root = options.cache_dir.expanduser() if options.cache_dir is not None else engine_cache_root(environ)
    return root / bundle_cache_dirname(manifest)


def _positive_int(manifest: Manifest, where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(
            f"bundle {manifest.name!r} has {where}={value!r}, which must be a positive integer; re-export it "
            "(python -m export)"
        )
    return value


def bundle_shape_limits(manifest: Manifest, max_batch: int = DEFAULT_MAX_BATCH) -> ShapeLimits:
    """The range of every named dynamic dimension the bundle contract bounds.

    batch: 1..max_batch (opt 1). seq and past: 1..the decoder context (preprocess.text.context_length,
    else model.max_length), opt half of it. frames: 1..model.max_frames, opt half of it. new: 1.
    A dimension the contract does not bound is left out (a component using it cannot get a profile).
    """
    from tinymm.backends.engine_cache import ShapeLimits, contract_limits

    text = manifest.preprocess.text
    context = (
        text.context_length if text is not None
        else _positive_int(manifest, "model.max_length", manifest.model.get("max_length"))
    )
    max_frames = _positive_int(manifest, "model.max_frames", manifest.model.get("max_frames"))
    limits = contract_limits(context or 1, max_batch=max_batch, max_frames=max_frames)
    if context is None:
        limits = ShapeLimits(batch=limits.batch, dims={k: v for k, v in limits.dims.items() if k not in CONTEXT_DIMS})
    return limits


def component_trt_profiles(manifest: Manifest, name: str, limits: ShapeLimits) -> tuple[InputProfile, ...]:
    """The TensorRT optimization profile of component ``name``: one InputProfile per input with a
    dynamic (named) dimension, sorted by input name; inputs of fixed sizes only are left out.

    Raises BundleError when a dynamic dimension has no range in ``limits``.
    """
    from tinymm.backends.engine_cache import compute_profiles

    component = manifest.component(name)
    dynamic = [spec for spec in component.inputs if any(isinstance(dim, str) for dim in spec.shape)]
    try:
        return compute_profiles(dynamic, limits)
    except InputError as e:
        raise BundleError(
            f"bundle {manifest.name!r}, component {name!r}: {e}. The TensorRT provider needs the range of every "
            "dynamic dimension from the bundle contract (preprocess.text.context_length for seq and past, "
            "model.max_frames for frames); re-export the bundle, or use --provider cuda"
        ) from e


def component_backend_options(
    manifest: Manifest, chosen: Mapping[str, str], options: LoadOptions, provider: str
) -> dict[str, BackendOptions]:
    """The BackendOptions of each component (name -> chosen precision): on TensorRT, with its profile,
    the engine cache, and the TensorRT precision flag of the variant (fp16 layers for an fp16 file,
    int8 for the QDQ int8 file, which TensorRT only runs in int8 with the flag on)."""
    base = options.backend_options()
    if provider != "tensorrt":
        return {name: base for name in chosen}
    limits = bundle_shape_limits(manifest, options.max_batch)
    cache_dir = engine_cache_dir(manifest, options)
    logger.info("TensorRT engine cache: %s", cache_dir if cache_dir is not None else "off")
    return {
        name: replace(base, cache_dir=cache_dir, trt_profiles=component_trt_profiles(manifest, name, limits),
                      trt_fp16=precision == "fp16", trt_int8=precision == "int8")
        for name, precision in chosen.items()
    }


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
    provider = resolved_provider(backend, options.provider)
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
    backend_options = component_backend_options(manifest, chosen, options, provider)
    sessions = {}
    for name in names:
        path = bundle.checked_component_path(name, chosen[name])
        sessions[name] = backend.load(path, backend_options[name])
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
    cache_dir: str | Path | None = None,
    engine_cache: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
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
        cache_dir: TensorRT only: the root of the engine caches; each bundle gets a directory in
            it (default: $TINYMM_CACHE_DIR, $XDG_CACHE_HOME/tinymm or ~/.cache/tinymm).
        engine_cache: TensorRT only: False builds the engines at every load and writes nothing.
        max_batch: TensorRT only: the largest batch the engines accept (images x beams, or the
            labels of one classify call).

    Returns:
        A VisionLanguagePipeline (family "vision-language") or a SpeechPipeline ("speech").

    Raises:
        BundleError: no such bundle, an invalid or corrupt one, or a family without a pipeline.
        BackendError: the backend or provider is unavailable, or a model fails to load.
        ValueError: an argument outside the choices listed above.
    """
    options = LoadOptions(
        backend, provider, precision, threads, verify_checksums,
        cache_dir=cache_dir, engine_cache=engine_cache, max_batch=max_batch,
    )
    return load_with(name_or_path, options, family)


def load_with(name_or_path: str | Path, options: LoadOptions, family: str | None = None) -> Any:
    """``load`` with a LoadOptions (as the task subcommands build it from their flags)."""
    from tinymm.bundle import read_bundle

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
