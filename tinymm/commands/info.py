"""``tinymm info BUNDLE``: describe a bundle and verify every file's sha256.

Prints the name, family and tasks, each component's inputs, outputs and variant files with their
sizes, the preprocessing contract, the golden pairs, a provenance summary, the total size and
``checksums: N files OK``. ``--no-verify`` skips hashing (sizes are still checked); ``--json``
prints ``{"ok": true, "root": ..., "manifest": {...}, "checksums": {...}, ...}`` instead.
Every way a bundle can be wrong is a BundleError (exit code 4) with its own ``kind``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from tinymm.bundle import Bundle, VerifyReport

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
BYTES_PER_UNIT = 1024
MAX_VALUE_CHARS = 100  # provenance values longer than this are cut in the text output
INDENT = "  "


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="describe a bundle and verify its checksums",
        description="Describe a bundle (directory or .tar/.tar.gz/.tgz archive) and verify every file's sha256.",
    )
    parser.add_argument("bundle", help="bundle directory (holding manifest.json), bundle archive, or the name of "
                        "a default bundle (scene-vlm, speech-commands)")
    parser.add_argument("--no-verify", action="store_true", help="skip hashing the files (sizes are still checked)")
    return parser


def format_bytes(size: int) -> str:
    """``794 B``, ``13.6 KiB`` (for 13933), ``1.0 MiB``."""
    if size < BYTES_PER_UNIT:
        return f"{size} B"
    value = float(size)
    for unit in BYTE_UNITS[1:-1]:
        value /= BYTES_PER_UNIT
        if value < BYTES_PER_UNIT:
            return f"{value:.1f} {unit}"
    return f"{value / BYTES_PER_UNIT:.1f} {BYTE_UNITS[-1]}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _numbers(values: Any) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _file(bundle: "Bundle", path: str) -> str:
    entry = bundle.manifest.files.get(path)
    return path if entry is None else f"{path} ({format_bytes(entry.size)})"


def _component_lines(bundle: "Bundle") -> list[str]:
    lines = ["components:"]
    for name, component in bundle.manifest.components.items():
        lines.append(f"{INDENT}{name}")
        lines += [f"{INDENT * 2}input   {spec}" for spec in component.inputs]
        lines += [f"{INDENT * 2}output  {spec}" for spec in component.outputs]
        if component.roles:
            lines.append(f"{INDENT * 2}roles   " + ", ".join(f"{r}={t}" for r, t in component.roles.items()))
        lines += [f"{INDENT * 2}{p:<7} {_file(bundle, component.variants[p].file)}" for p in component.precisions]
    return lines


def _preprocess_lines(bundle: "Bundle") -> list[str]:
    pre = bundle.manifest.preprocess
    lines = ["preprocess:" if pre.to_dict() else "preprocess: none"]
    if pre.image is not None:
        im = pre.image
        lines.append(
            f"{INDENT}image  {im.width}x{im.height} {im.channel_order} {im.dtype}, "
            f"resize {im.resize} ({im.interpolation}), mean {_numbers(im.mean)}, std {_numbers(im.std)}"
        )
    if pre.audio is not None:
        au = pre.audio
        lines.append(
            f"{INDENT}audio  {au.sample_rate} Hz, n_fft {au.n_fft}, hop {au.hop_length}, {au.n_mels} mels "
            f"{au.f_min:g}-{au.f_max:g} Hz, {au.log}, {au.normalization} normalization, max {au.max_seconds:g} s"
        )
    if pre.text is not None:
        tx = pre.text
        specials = ", ".join(f"{k}={v}" for k, v in tx.special_tokens.items()) or "none"
        lines.append(
            f"{INDENT}text   tokenizer {_file(bundle, tx.tokenizer)}, context {tx.context_length} tokens, "
            f"bos {tx.bos_id} eos {tx.eos_id} pad {tx.pad_id} unk {tx.unk_id}, special tokens: {specials}"
        )
        lines += [f"{INDENT}{'':7}prompt {task}: {template!r}" for task, template in tx.prompt_templates.items()]
    return lines


def _golden_lines(bundle: "Bundle") -> list[str]:
    golden = bundle.manifest.golden
    lines = [f"golden pairs: {len(golden)}" if golden else "golden pairs: none"]
    for pair in golden:
        tolerance = "; ".join(f"{p} {t}" for p, t in pair.tolerance.items())
        lines.append(f"{INDENT}{pair.component}: {pair.inputs} -> {pair.outputs} ({tolerance})")
    return lines


def _provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    if not provenance:
        return ["provenance: none"]
    lines = ["provenance:"]
    for key, value in provenance.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={_short(v)}" for k, v in value.items())
        lines.append(f"{INDENT}{key}: {_short(value)}")
    return lines


def render_text(bundle: "Bundle", report: "VerifyReport | None") -> str:
    """The human-readable description of ``bundle`` that ``tinymm info`` prints."""
    from tinymm.bundle.validate import thaw_json

    manifest = bundle.manifest
    created = f", created by {manifest.created_by}" if manifest.created_by else ""
    lines = [
        f"{manifest.name} (family {manifest.family}, architecture {manifest.architecture_name}, "
        f"format v{manifest.format_version}{created})",
        f"{INDENT}path:  {bundle.root}",
        f"{INDENT}tasks: {', '.join(manifest.tasks)}",
        "",
        *_component_lines(bundle),
        "",
        *_preprocess_lines(bundle),
        "",
        *_golden_lines(bundle),
        "",
        *_provenance_lines(thaw_json(manifest.provenance)),
        "",
    ]
    if manifest.model_card is not None:
        lines.append(f"model card: {_file(bundle, manifest.model_card)}")
    lines.append(f"files: {len(manifest.files)}, total {format_bytes(manifest.total_bytes)}")
    if report is None:
        lines.append("checksums: not verified (--no-verify); sizes match")
    else:
        lines.append(f"checksums: {report.files_checked} files OK")
    return "\n".join(lines) + "\n"


def describe_json(bundle: "Bundle", report: "VerifyReport | None") -> dict[str, Any]:
    """The ``--json`` object: the whole manifest, the bundle's location and what was verified."""
    manifest = bundle.manifest
    return {
        "ok": True,
        "root": str(bundle.root),
        "manifest": manifest.to_dict(),
        "total_bytes": manifest.total_bytes,
        "checksums": {
            "verified": report is not None,
            "files_ok": report.files_checked if report is not None else 0,
            "files": len(manifest.files),
        },
        "models_checked": report.models_checked if report is not None else 0,
        "golden_checked": report.golden_checked if report is not None else 0,
    }


def run(args: argparse.Namespace) -> int:
    from tinymm.bundle import read_bundle, verify_bundle
    from tinymm.bundle.names import resolve_bundle

    with read_bundle(resolve_bundle(args.bundle), verify_checksums=False) as bundle:
        report = None if args.no_verify else verify_bundle(bundle)
        if args.json:
            sys.stdout.write(json.dumps(describe_json(bundle, report), indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(render_text(bundle, report))
    return 0
