"""Verify a bundle in depth: every sha256, every model's interface, every golden pair."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tinymm.bundle.errors import InterfaceMismatchError
from tinymm.bundle.golden import check_arrays, load_npz
from tinymm.bundle.integrity import check_external_data, check_files, check_models, check_no_unlisted_files
from tinymm.bundle.manifest import Component
from tinymm.bundle.onnx_scan import OnnxSummary
from tinymm.bundle.reader import Bundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_bundle`` checked. Any failure raises instead of being reported here."""

    files_checked: int  # files whose size and sha256 match the manifest
    bytes_checked: int  # their total size in bytes
    models_checked: int  # ONNX files whose inputs, outputs and external data match the manifest
    golden_checked: int  # golden pairs whose arrays match their component's specs
    external_data: tuple[str, ...]  # external data files the models read


def _check_interface(root: Path, file: str, name: str, component: Component, summary: OnnxSummary) -> None:
    """The model's graph inputs and outputs must be the ones the manifest lists."""
    expected_inputs = [spec.name for spec in component.inputs]
    missing = [n for n in expected_inputs if n not in summary.inputs]
    extra = [n for n in summary.inputs if n not in expected_inputs and n not in summary.initializers]
    expected_outputs = sorted(spec.name for spec in component.outputs)
    if missing or extra or sorted(summary.outputs) != expected_outputs:
        raise InterfaceMismatchError(
            f"{root}: {file!r}: the model's inputs {list(summary.inputs)} and outputs {list(summary.outputs)} do not "
            f"match component {name!r} in manifest.json (inputs {expected_inputs}, outputs {expected_outputs}); "
            "re-export the component or fix the manifest"
        )


def verify_bundle(bundle: Bundle) -> VerifyReport:
    """Hash every listed file, check each model against its component and each golden pair.

    Raises the BundleError subclass of the first problem found; returns a VerifyReport otherwise.
    """
    manifest = bundle.manifest
    check_files(bundle.root, manifest, verify_checksums=True)
    summaries = check_models(bundle.root, manifest)
    external: list[str] = []
    for name, component in manifest.components.items():
        for variant in component.variants.values():
            summary = summaries[variant.file]
            _check_interface(bundle.root, variant.file, name, component, summary)
            external.extend(check_external_data(bundle.root, variant.file, summary, manifest.files))
    for pair in manifest.golden:
        component = manifest.components[pair.component]
        for file, specs in ((pair.inputs, component.inputs), (pair.outputs, component.outputs)):
            what = f"{bundle.root}: golden file {file!r} of component {pair.component!r}"
            check_arrays(load_npz(bundle.file_path(file), what), specs, what)
    check_no_unlisted_files(bundle.root, manifest)  # added since the bundle was read
    return VerifyReport(
        files_checked=len(manifest.files),
        bytes_checked=manifest.total_bytes,
        models_checked=len(summaries),
        golden_checked=len(manifest.golden),
        external_data=tuple(dict.fromkeys(external)),
    )
