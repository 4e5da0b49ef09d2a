"""TensorRT optimization profiles and engine cache directories, from the bundle contract.

On the TensorRT provider each component gets an optimization profile computed from the bundle
contract (``bundle_shape_limits``: batch 1..max_batch, and every other named dimension 1..the
largest size the manifest gives it; ``engine_cache.compute_profiles``, as
``export/tensorrt_build.py`` uses) and an engine cache directory: ``<root>/<bundle name>-<manifest
hash>``, where root is ``cache_dir``, else ``$TINYMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinymm``,
else ``~/.cache/tinymm``. The manifest hash (it covers every file's sha256) keeps bundles of the
same name, or a re-exported bundle, from sharing engines, and lets an archive extracted to a new
temporary directory at every load reuse its engines. The first load builds the engines (minutes
on a Jetson); later loads read them. The directory is created only when TensorRT is used.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from tinymm.errors import BundleError, InputError
from tinymm.pipelines.load_options import DEFAULT_MAX_BATCH
from tinymm.user_cache import user_cache_root

if TYPE_CHECKING:  # the backends import numpy: loaded when a bundle is, not for `tinymm --help`
    from tinymm.backends.base import BackendOptions, InputProfile
    from tinymm.backends.engine_cache import ShapeLimits
    from tinymm.bundle import Manifest
    from tinymm.pipelines.load_options import LoadOptions

logger = logging.getLogger(__name__)

BUNDLE_HASH_HEX_CHARS = 12  # of the manifest's sha256, in a bundle's cache directory name
DYNAMIC_DIMS_KEY = "dynamic_dims"  # manifest model key: dynamic dimension name -> largest size
CONTEXT_DIMS = ("seq", "past")  # bundles without dynamic_dims: the dimensions bounded by the decoder context


def engine_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The default root of the TensorRT engine caches (nothing is created).

    The user's tinymm cache root (tinymm.user_cache): ``$TINYMM_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/tinymm`` when that is an absolute path, else ``~/.cache/tinymm``.
    """
    return user_cache_root(environ)


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


def _declared_dims(manifest: Manifest) -> dict[str, int] | None:
    """The manifest's ``model.dynamic_dims`` (dimension name -> largest size), or None when absent."""
    declared = manifest.model.get(DYNAMIC_DIMS_KEY)
    if declared is None:
        return None
    if not isinstance(declared, Mapping) or not declared:
        raise BundleError(
            f"bundle {manifest.name!r} has model.{DYNAMIC_DIMS_KEY}={declared!r}, which must be a non-empty object "
            'of dimension name -> largest size (e.g. {"frames": 3000, "seq": 448}); re-export it (python -m export)'
        )
    dims = {}
    for name, size in declared.items():
        if not isinstance(name, str) or not name:
            raise BundleError(f"bundle {manifest.name!r} has an empty dimension name in model.{DYNAMIC_DIMS_KEY}; "
                              "re-export it (python -m export)")
        dims[name] = _positive_int(manifest, f"model.{DYNAMIC_DIMS_KEY}[{name!r}]", size)
    return dims


def bundle_shape_limits(manifest: Manifest, max_batch: int = DEFAULT_MAX_BATCH) -> ShapeLimits:
    """The range of every named dynamic dimension the bundle contract bounds.

    batch: 1..max_batch (opt 1). A bundle that declares ``model.dynamic_dims`` (dimension name ->
    largest size) gets exactly those: each dimension 1..its size, opt half of it; a "batch" entry
    lowers max_batch to its size. A bundle without it (every bundle exported before the field)
    gets the contract's fixed names: seq and past 1..the decoder context
    (preprocess.text.context_length, else model.max_length), opt half of it; frames
    1..model.max_frames, opt half of it; new 1. A dimension the contract does not bound is left
    out (a component using it cannot get a profile).
    """
    from tinymm.backends.engine_cache import BATCH_DIM, ShapeLimits, contract_limits

    declared = _declared_dims(manifest)
    if declared is not None:
        batch = min(max_batch, declared.pop(BATCH_DIM, max_batch))
        dims = {name: (1, max(1, size // 2), size) for name, size in declared.items()}
        return ShapeLimits(batch=(1, 1, batch), dims=dims)
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
            f"dynamic dimension from the bundle contract (model.{DYNAMIC_DIMS_KEY}, or for older bundles "
            "preprocess.text.context_length for seq and past and model.max_frames for frames); re-export the "
            "bundle, or use --provider cuda"
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
