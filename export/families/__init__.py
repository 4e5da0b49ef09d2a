"""Exporters of public model families: a downloaded checkpoint directory -> a verified tinymm bundle.

``python -m export hf SOURCE --out BUNDLE`` asks each module of FAMILY_MODULES, in order, whether
it recognizes SOURCE (``detect(source) -> bool``, cheap: file names and config keys only) and
runs the first one's ``export(request) -> ExportResult``. A family module imports torch and
transformers inside its functions, so that listing the families stays cheap. Adding a family is
one module here and one line in FAMILY_MODULES.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from export.onnx_common import ExportOptions, shipped_precisions
from tinymm.errors import InputError

FAMILY_MODULES = ("export.families.whisper", "export.families.smolvlm", "export.families.clip", "export.families.siglip")  # tried in this order


@dataclass(frozen=True)
class HFExportRequest:
    """What to export and how; checked once here (ValueError per bad field)."""

    source: Path  # the checkpoint directory (nothing is downloaded)
    out: Path  # the bundle directory to write
    precisions: tuple[str, ...] = ("fp32",)  # fp32 is always written
    data_dir: Path | None = None  # real inputs (a family-specific layout); None: generated ones
    name: str | None = None  # bundle name; None: the output directory's name
    force: bool = False  # replace an existing bundle at out
    options: ExportOptions = field(default_factory=lambda: ExportOptions(exporter="torchscript"))
    progress: bool = True  # show a tqdm bar
    command: str = ""  # the command line, recorded in the provenance
    seed: int = 0  # of generated inputs
    max_metric_drop: float | None = None  # int8 gate threshold in metric points; None: the family's default
    eval_samples: int | None = None  # items the int8 gate evaluates; None: the family's default
    source_label: str | None = None  # how the provenance and model card name the source; None: its path
    # The VAD bundle the runtime checks every clip with before decoding (manifest model.vad, e.g.
    # "silero-vad", shipped with tinymm); None: no check (speech families only).
    vad: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "out", "data_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "precisions", shipped_precisions(self.precisions))
        if self.eval_samples is not None and (isinstance(self.eval_samples, bool) or self.eval_samples < 1):
            raise ValueError(f"eval_samples={self.eval_samples!r} must be a positive integer")
        if self.max_metric_drop is not None and not self.max_metric_drop >= 0:
            raise ValueError(f"max_metric_drop={self.max_metric_drop!r} must be >= 0 points")
        if self.vad is not None and (not isinstance(self.vad, str) or not self.vad.strip()):
            raise ValueError(f"vad={self.vad!r} must be a VAD bundle name such as 'silero-vad', or None")


@dataclass(frozen=True, eq=False)
class ExportResult:
    """A written, verified bundle and a JSON-ready summary of what went into it."""

    bundle: Any  # tinymm.bundle.Bundle
    summary: Mapping[str, Any]  # family, files and sizes per precision, seconds, parity, int8 gate


def family_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in FAMILY_MODULES]


def find_family(source: Path) -> ModuleType:
    """The family module that recognizes ``source``; InputError naming the known families otherwise."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source} is not a directory; give a downloaded checkpoint directory")
    modules = family_modules()
    for module in modules:
        if module.detect(source):
            return module
    known = "; ".join(f"{m.NAME}: {m.DESCRIPTION}" for m in modules)
    raise InputError(f"no exporter recognizes {source} (known: {known})")


def export_source(request: HFExportRequest) -> ExportResult:
    """Export ``request.source`` with the family that recognizes it."""
    return find_family(request.source).export(request)
