"""``tinymm verify BUNDLE``: rerun every golden pair on this device and compare with the tolerances.

For each golden pair of the bundle and each precision the pair has a tolerance for (``--precision``
picks one), the component's variant is loaded with the chosen backend and provider, run on the
recorded inputs, and every output is compared with the recorded one: the largest absolute
difference and the cosine similarity of the flattened arrays. A pair passes when every output
is within the tolerance (``max_abs`` at most, ``min_cosine`` at least).

Exit codes: 0 every check passed; EXIT_TOLERANCE (6) at least one output is outside its
tolerance (the report says which); 4 the bundle is bad (checksums, manifest, golden files);
5 the backend or provider failed; 3 a precision the bundle does not have. Only the runtime is
needed (no torch): the export uses the same comparison (``compare_outputs``) for its checks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tinymm.errors import EXIT_OK, EXIT_TOLERANCE, InputError
from tinymm.pipelines.load_options import LoadOptions

if TYPE_CHECKING:
    import numpy as np

    from tinymm.backends import Backend, Session
    from tinymm.bundle import Bundle, GoldenPair, Tolerance

PRECISION_CHOICES = ("all", "fp32", "fp16", "int8")
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
INDENT = "  "


@dataclass(frozen=True)
class OutputError:
    """How far one output is from its golden value."""

    name: str
    max_abs: float  # largest |got - expected|; inf when the shapes differ, nan when got holds NaN
    cosine: float  # cosine similarity of the flattened arrays; -1 when the shapes differ


@dataclass(frozen=True)
class GoldenResult:
    """One golden pair run at one precision."""

    component: str
    precision: str
    provider: str  # the provider that ran it (cpu, cuda, tensorrt)
    outputs: tuple[OutputError, ...]
    tolerance: "Tolerance"

    @property
    def max_abs(self) -> float:
        """The largest error over the outputs (nan when any output has nan)."""
        values = [o.max_abs for o in self.outputs]
        return math.nan if any(math.isnan(v) for v in values) else max(values)

    @property
    def min_cosine(self) -> float:
        """The smallest cosine over the outputs (nan when any output has nan)."""
        values = [o.cosine for o in self.outputs]
        return math.nan if any(math.isnan(v) for v in values) else min(values)

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per output outside the tolerance (empty when the pair passes)."""
        out = []
        for o in self.outputs:
            tol = self.tolerance
            if tol.max_abs is not None and not o.max_abs <= tol.max_abs:
                out.append(f"{o.name}: max_abs {o.max_abs:.3g} > {tol.max_abs:g}")
            if tol.min_cosine is not None and not o.cosine >= tol.min_cosine:
                out.append(f"{o.name}: cosine {o.cosine:.6f} < {tol.min_cosine:g}")
        return tuple(out)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "precision": self.precision,
            "provider": self.provider,
            "max_abs": _json_number(self.max_abs),
            "min_cosine": _json_number(self.min_cosine),
            "tolerance": self.tolerance.to_dict(),
            "passed": self.passed,
            "failures": list(self.failures),
            "outputs": {o.name: {"max_abs": _json_number(o.max_abs), "cosine": _json_number(o.cosine)}
                        for o in self.outputs},
        }


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: those become the strings "nan", "inf"."""
    return value if math.isfinite(value) else str(value)


def compare_arrays(expected: "np.ndarray", got: "np.ndarray") -> tuple[float, float]:
    """(max |got - expected|, cosine similarity) of two arrays of the same shape, in float64.

    The cosine of two all-zero arrays is 1 (they agree); of one zero and one non-zero array, 0.
    Different shapes give (inf, -1).
    """
    import numpy as np

    if expected.shape != got.shape:
        return math.inf, -1.0
    a = np.asarray(expected, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0, 1.0
    max_abs = float(np.max(np.abs(a - b)))
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        cosine = 1.0 if not a.any() and not b.any() else 0.0
    else:
        cosine = float(np.dot(a, b) / norm)
    return max_abs, cosine


def compare_outputs(expected: Mapping[str, "np.ndarray"], got: Mapping[str, "np.ndarray"]) -> tuple[OutputError, ...]:
    """An OutputError for every array of ``expected``; a name missing from ``got`` is a mismatch."""
    out = []
    for name, value in expected.items():
        max_abs, cosine = compare_arrays(value, got[name]) if name in got else (math.inf, -1.0)
        out.append(OutputError(name, max_abs, cosine))
    return tuple(out)


def run_golden(
    session: "Session", inputs: Mapping[str, "np.ndarray"], outputs: Mapping[str, "np.ndarray"],
    *, component: str, precision: str, tolerance: "Tolerance",
) -> GoldenResult:
    """Run ``session`` on golden ``inputs`` and compare with golden ``outputs`` (name -> array)."""
    got = session.run(dict(inputs), list(outputs))
    return GoldenResult(component, precision, session.provider, compare_outputs(outputs, got), tolerance)


def _checks(bundle: "Bundle", precision: str) -> list[tuple["GoldenPair", str]]:
    """(golden pair, precision) for every check to run; InputError when none is at ``precision``."""
    manifest = bundle.manifest
    if not manifest.golden:
        from tinymm.bundle import NotInBundleError

        raise NotInBundleError(
            f"bundle {manifest.name!r} has no golden pairs, so there is nothing to verify; "
            "export it with python -m export, which records them"
        )
    checks = [(pair, p) for pair in manifest.golden for p in manifest.components[pair.component].precisions
              if p in pair.tolerance and precision in ("all", p)]
    if not checks:
        available = sorted({p for pair in manifest.golden for p in pair.tolerance})
        raise InputError(
            f"--precision {precision}: bundle {manifest.name!r} has no golden tolerance at that precision; "
            f"it has {available}. Pick one of them or --precision all"
        )
    return checks


def verify_golden(
    bundle: "Bundle", backend: "Backend", *, provider: str = "auto", precision: str = "all",
    load_options: LoadOptions | None = None,
) -> list[GoldenResult]:
    """Rerun every golden pair of ``bundle`` at ``precision`` ("all" or one of fp32, fp16, int8).

    load_options gives the TensorRT engine cache settings (default: tinymm.load's defaults).
    Raises BundleError for a bad golden file, BackendError when a model cannot be loaded or run.
    """
    from tinymm.backends.trt_profiles import component_backend_options
    from tinymm.pipelines.sessions import resolved_provider

    options = load_options or LoadOptions()
    chosen_provider = resolved_provider(backend, provider)
    sessions: dict[tuple[str, str], Any] = {}
    results = []
    for pair, p in _checks(bundle, precision):
        key = (pair.component, p)
        if key not in sessions:
            # What tinymm.load gives the variant: on TensorRT, its profile, the engine cache and precision flag.
            backend_options = component_backend_options(bundle.manifest, {pair.component: p}, options,
                                                        chosen_provider)[pair.component]
            sessions[key] = backend.load(bundle.component_path(pair.component, p), backend_options)
        inputs, outputs = bundle.golden_arrays(pair)
        results.append(run_golden(sessions[key], inputs, outputs, component=pair.component, precision=p,
                                  tolerance=pair.tolerance[p]))
    return results


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="rerun the bundle's golden pairs on this device and check the tolerances",
        description="Check the bundle's files, then rerun every golden pair with the chosen backend and provider "
        "and compare each output with its tolerance (max abs error, cosine). Exit 0 when all pass, "
        f"{EXIT_TOLERANCE} when an output is outside its tolerance, 4 for a bad bundle, 5 for a backend error.",
    )
    parser.add_argument("bundle", help="bundle directory (holding manifest.json), bundle archive, or the name of "
                        "a default bundle (scene-vlm, speech-commands)")
    parser.add_argument("--backend", default="onnxruntime",
                        help="inference backend, as tinymm.backends.known_backends() names them (default onnxruntime)")
    parser.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help="execution provider")
    parser.add_argument("--precision", default="all", choices=PRECISION_CHOICES,
                        help="verify one precision's variants, or all the bundle has")
    LoadOptions.add_cache_arguments(parser)
    return parser


def _format_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return INDENT + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def render_text(bundle: "Bundle", backend_name: str, results: Sequence[GoldenResult]) -> str:
    """The table ``tinymm verify`` prints: one row per golden pair and precision."""
    header = ("component", "precision", "provider", "max_abs", "min_cosine", "tolerance", "result")
    rows = [
        (r.component, r.precision, r.provider, f"{r.max_abs:.3g}", f"{r.min_cosine:.6f}", str(r.tolerance),
         "ok" if r.passed else "FAIL " + "; ".join(r.failures))
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)] + [0]
    failed = sum(not r.passed for r in results)
    lines = [
        f"verify {bundle.name} ({bundle.root}) with {backend_name}",
        _format_row(header, widths),
        *(_format_row(row, widths) for row in rows),
        f"{len(results)} checks: {len(results) - failed} passed, {failed} failed",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from tinymm.backends import get_backend
    from tinymm.bundle import read_bundle, verify_bundle
    from tinymm.bundle.names import resolve_bundle

    with read_bundle(resolve_bundle(args.bundle), verify_checksums=False) as bundle:
        verify_bundle(bundle)  # checksums, interfaces and golden shapes before running anything
        backend = get_backend(args.backend)
        load_options = LoadOptions(cache_dir=args.cache_dir, engine_cache=args.engine_cache)
        results = verify_golden(bundle, backend, provider=args.provider, precision=args.precision,
                                load_options=load_options)
        ok = all(r.passed for r in results)
        if args.json:
            payload = {"ok": ok, "root": str(bundle.root), "name": bundle.name, "backend": args.backend,
                       "passed": sum(r.passed for r in results), "failed": sum(not r.passed for r in results),
                       "results": [r.to_dict() for r in results]}
            sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(render_text(bundle, args.backend, results))
    if not ok:
        sys.stderr.write(f"tinymm: error: {sum(not r.passed for r in results)} golden check(s) outside tolerance\n")
        return EXIT_TOLERANCE
    return EXIT_OK
