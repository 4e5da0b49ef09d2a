"""Model families: one module per architecture, found by the name a bundle's manifest gives.

A bundle's ``manifest.architecture_name`` (the declared ``architecture``, else its family's
default: vision-language -> ``tinymm-vlm``, speech -> ``tinymm-ctc``) names the module
``tinymm.families.<name with '-' as '_'>``, imported on first use (architecture names use '-',
never '_'). Each family module exposes::

    ARCHITECTURE = "whisper"                   # the manifest's name for it
    def from_bundle(bundle, options): ...      # the pipeline of a read bundle, its models loaded

(sherpa-onnx's ``OfflineRecognizer.from_whisper`` habit: one named constructor per family).
Adding a family is adding its module here: nothing else names it. Every public module of this
package is a family module; a family's private helpers start with '_' (or live in decoding/,
preprocess/ ...). ``tinymm.load`` asks
``family_module(manifest.architecture_name)`` for the module of every bundle it loads.

Nothing is imported until a family is asked for: this package imports only the standard library.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from tinymm.bundle.errors import UnknownArchitectureError


def module_name(architecture: str) -> str:
    """The module of ``architecture``: "tinymm-vlm" -> "tinymm.families.tinymm_vlm"."""
    return f"{__name__}.{architecture.replace('-', '_')}"


def known_architectures() -> tuple[str, ...]:
    """The architectures this tinymm runs: the family modules present, sorted, by their manifest
    names ("tinymm-ctc", "tinymm-vlm", ...); nothing is imported."""
    return tuple(sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__)
                        if not info.name.startswith("_") and not info.ispkg))


def family_module(architecture: str) -> ModuleType:
    """The family module of ``architecture``, imported on first use.

    Raises UnknownArchitectureError (a BundleError) naming the architecture and the known ones
    when no module runs it; ImportError when the module lacks ARCHITECTURE or from_bundle (a bug
    of that module, not of the bundle). An ImportError raised inside a family module is not masked.
    """
    name = module_name(architecture)
    if architecture not in known_architectures():
        raise UnknownArchitectureError(
            f"architecture {architecture!r} has no module in tinymm.families (this tinymm runs "
            f"{', '.join(known_architectures()) or 'none'}); a newer tinymm may run it: upgrade tinymm "
            "(pip install -U tinymm), or pass a bundle of a known architecture"
        )
    module = importlib.import_module(name)
    declared = getattr(module, "ARCHITECTURE", None)
    if declared != architecture or not callable(getattr(module, "from_bundle", None)):
        raise ImportError(
            f"module {name} declares ARCHITECTURE={declared!r} and from_bundle="
            f"{getattr(module, 'from_bundle', None)!r}; a family module for {architecture!r} needs "
            f"ARCHITECTURE = {architecture!r} and a from_bundle(bundle, options) constructor"
        )
    return module
