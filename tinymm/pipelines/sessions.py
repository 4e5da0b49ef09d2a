"""The models and the tokenizer of a bundle, opened for a family's named constructor.

    sessions = open_sessions(bundle, ("image_encoder", "decoder_first"), ("text_encoder",), options)
    tokenizer = bundle_tokenizer(bundle)

``precision="auto"`` takes, per component, int8 on the CPU and fp16 on GPU providers when the
bundle has that variant, else fp32. An explicit precision that a component lacks falls back to
fp32 for that component, with a warning; if no component has it, that is a BundleError. On the
TensorRT provider each session also gets its optimization profile and engine cache
(``tinymm.backends.trt_profiles``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from tinymm.backends.trt_profiles import component_backend_options
from tinymm.errors import BundleError

if TYPE_CHECKING:
    from tinymm.backends.base import Session
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.preprocess.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# precision "auto": the variants tried, best first, on a CPU and on a GPU provider.
AUTO_PRECISIONS = {"cpu": ("int8", "fp32"), "gpu": ("fp16", "fp32")}
FALLBACK_PRECISION = "fp32"


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
    """The bundle's tokenizer, of its text contract's kind (sentencepiece, or a Hugging Face
    tokenizer.json: ``tinymm.preprocess.tokenizer.open_tokenizer``); BundleError when its manifest
    has no text contract."""
    from tinymm.preprocess.tokenizer import open_tokenizer

    text = bundle.manifest.preprocess.text
    if text is None or bundle.tokenizer_path is None:
        raise BundleError(
            f"bundle {bundle.name!r} has no preprocess.text section (tokenizer and special ids); re-export it"
        )
    return open_tokenizer(bundle.tokenizer_path, text)
