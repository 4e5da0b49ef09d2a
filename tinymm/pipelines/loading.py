"""``load``: a bundle (path or name) in, the pipeline of its architecture out.

    import tinymm
    vlm = tinymm.load("bundles/scene-vlm")                 # a directory or .tar/.tar.gz archive
    vlm.caption("photo.jpg").text
    asr = tinymm.load("speech-commands", precision="int8")  # a default bundle shipped with tinymm

A name that is not an existing path is looked up among the default bundles shipped with tinymm,
then in the user's bundle directory (``tinymm.bundle.names``). The manifest names the bundle's
architecture (``manifest.architecture_name``), and that architecture's module in
``tinymm.families`` builds the pipeline (``from_bundle(bundle, options)``); this module names
no family. The options are ``LoadOptions`` (``tinymm.pipelines.load_options``); the families open
their models with ``tinymm.pipelines.sessions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinymm.bundle.errors import UnknownArchitectureError
from tinymm.bundle.names import resolve_bundle
from tinymm.errors import BundleError
from tinymm.families import family_module
from tinymm.pipelines.load_options import DEFAULT_MAX_BATCH, LoadOptions


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
) -> Any:
    """Read a bundle and return the pipeline of its architecture, with its models loaded.

    Args:
        name_or_path: a bundle directory, a .tar/.tar.gz/.tgz archive, or the name of a default
            bundle or of a bundle in the user's bundle directory.
        backend: "onnxruntime" (or another name tinymm.backends knows).
        provider: "auto" (TensorRT > CUDA > CPU, as available), "cpu", "cuda" or "tensorrt".
        precision: "auto", "fp32", "fp16" or "int8" (tinymm.pipelines.sessions).
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
        The pipeline its architecture's module in tinymm.families builds: a VisionLanguagePipeline
        (architecture "tinymm-vlm", every vision-language bundle that names none), a
        SpeechPipeline ("tinymm-ctc", every such speech bundle), or another family's pipeline.

    Raises:
        BundleError: no such bundle, an invalid or corrupt one, the wrong family, or an
            architecture this tinymm has no module for (UnknownArchitectureError).
        BackendError: the backend or provider is unavailable, or a model fails to load.
        ValueError: an argument outside the choices listed above.
    """
    options = LoadOptions(
        backend, provider, precision, threads, verify_checksums,
        cache_dir=cache_dir, engine_cache=engine_cache, max_batch=max_batch,
    )
    return load_with(name_or_path, options, family)


def load_with(name_or_path: str | Path, options: LoadOptions, family: str | None = None,
              task: str | None = None) -> Any:
    """``load`` with a LoadOptions (as the task subcommands build it from their flags); ``task``, when
    given, must be one of the bundle's tasks (a VAD bundle is a speech bundle that cannot transcribe)."""
    from tinymm.bundle import read_bundle

    # Only the variants that open_sessions loads are scanned (the scan dominates reading a bundle).
    bundle = read_bundle(resolve_bundle(name_or_path), verify_checksums=options.verify_checksums, scan_models=False)
    manifest = bundle.manifest
    try:
        if family is not None and manifest.family != family:
            raise BundleError(
                f"bundle {bundle.name!r} ({str(name_or_path)!r}) is a {manifest.family} bundle, but a {family} "
                "bundle is needed here; pass the right one (e.g. --bundle PATH; tinymm info describes a bundle)"
            )
        if task is not None and task not in manifest.tasks:
            raise BundleError(
                f"bundle {bundle.name!r} ({str(name_or_path)!r}) does not do {task} (its tasks: "
                f"{', '.join(manifest.tasks)}); pass a bundle that does (e.g. --bundle PATH; tinymm info "
                "describes a bundle)"
            )
        try:
            module = family_module(manifest.architecture_name)
        except UnknownArchitectureError as e:
            raise UnknownArchitectureError(f"bundle {bundle.name!r} ({manifest.family}): {e}") from e
        return module.from_bundle(bundle, options)
    except BaseException:
        bundle.close()  # removes the directory an archive was extracted to
        raise
