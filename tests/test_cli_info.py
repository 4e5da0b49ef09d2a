"""`tinymm info` and the CLI's contract: exit codes, one-line errors, --json in both outcomes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tinymm.bundle
from test_bundle_fixtures import BREAKAGES, MODEL, tiny_bundle  # noqa: F401  (tiny_bundle is a fixture)
from tinymm import __version__
from tinymm.bundle.extract_cache import extract_cache_dir
from tinymm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_describes_and_verifies_a_bundle(tiny_bundle: Path, capsys) -> None:
    code, out, err = _run(capsys, "info", str(tiny_bundle))
    assert code == 0, err
    for expected in (
        "tiny (family example, architecture example, format v2",
        "tasks: embed",
        "input   x [batch, 4] float32",
        "output  y [batch, 2] float32",
        f"fp32    {MODEL} (",
        "image  8x8 RGB float32",
        "tokenizer tokenizer.model (35 B), context 16 tokens",
        "model: golden/model.inputs.npz -> golden/model.outputs.npz (fp32 max_abs=1e-05)",
        "command: pytest",
        "metrics: acc=1.0",
        "files: 5, total",
        "checksums: 5 files OK",
    ):
        assert expected in out
    assert err == ""


def test_info_json(tiny_bundle: Path, capsys) -> None:
    code, out, _ = _run(capsys, "info", str(tiny_bundle), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True and result["root"] == str(tiny_bundle)
    assert result["manifest"]["name"] == "tiny"
    assert result["manifest"]["components"]["model"]["variants"] == {"fp32": {"file": MODEL}}
    assert result["checksums"] == {"verified": True, "files_ok": 5, "files": 5}
    assert result["total_bytes"] == sum(f["bytes"] for f in result["manifest"]["files"].values())


def test_info_reads_an_archive_through_the_extraction_cache(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    archive = tinymm.bundle.pack_bundle(tiny_bundle, tmp_path / "tiny.tar.gz")
    code, out, _ = _run(capsys, "info", str(archive), "--json")
    assert code == 0
    root = Path(json.loads(out)["root"])
    assert root.name == "tiny" and root.parent.parent == extract_cache_dir()
    code, out, _ = _run(capsys, "info", str(archive), "--json")
    assert code == 0 and Path(json.loads(out)["root"]) == root


def test_no_verify_skips_hashing(tiny_bundle: Path, capsys) -> None:
    data = bytearray((tiny_bundle / MODEL).read_bytes())
    data[-1] ^= 0xFF
    (tiny_bundle / MODEL).write_bytes(bytes(data))
    code, out, _ = _run(capsys, "info", str(tiny_bundle), "--no-verify")
    assert code == 0 and "checksums: not verified" in out
    code, out, err = _run(capsys, "info", str(tiny_bundle))
    assert code == 4 and out == "" and "'model.onnx' has sha256" in err


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_each_bundle_failure_exits_4_with_one_line_and_its_kind(tiny_bundle: Path, capsys, name: str) -> None:
    breakage, error, fragment = BREAKAGES[name]
    breakage(tiny_bundle)
    code, out, err = _run(capsys, "info", str(tiny_bundle))
    assert code == 4 and out == ""
    assert err.count("\n") == 1 and err.startswith("tinymm: error: ") and fragment in err
    code, out, err = _run(capsys, "info", str(tiny_bundle), "--json")
    assert code == 4
    message = err[len("tinymm: error: ") :].strip()
    assert json.loads(out) == {"ok": False, "error": {"kind": error.kind, "message": message}}


def test_missing_bundle_path(tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "info", str(tmp_path / "nope"), "--json")
    assert code == 4 and "does not exist" in err


def test_info_and_verify_take_a_default_bundle_name(tiny_bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import shutil

    import tinymm.bundle.names as names

    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_bundle, shipped / "tiny-default")
    monkeypatch.setattr(names, "DEFAULT_BUNDLES_DIR", shipped)
    code, out, _ = _run(capsys, "info", "tiny-default", "--json")
    assert code == 0 and json.loads(out)["root"] == str(shipped / "tiny-default")
    code, out, _ = _run(capsys, "verify", "tiny-default", "--json")
    assert code == 0 and json.loads(out)["ok"]
    code, _, err = _run(capsys, "info", "no-such-bundle")
    assert code == 4 and "default bundles: tiny-default" in err


def test_usage_errors_exit_2(capsys) -> None:
    code, out, err = _run(capsys, "info")
    assert code == 2 and "required: bundle" in err and out == ""
    code, out, _ = _run(capsys, "frobnicate", "--json")
    assert code == 2 and json.loads(out)["error"]["kind"] == "usage"


def test_version_and_help(capsys) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"tinymm {__version__}"
    code, out, _ = _run(capsys, "info", "--help")
    assert code == 0 and "--no-verify" in out and "--json" in out


def test_unexpected_exception_is_one_line_with_a_hint(tiny_bundle: Path, capsys, monkeypatch) -> None:
    def explode(bundle):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tinymm.bundle, "verify_bundle", explode)
    code, out, err = _run(capsys, "info", str(tiny_bundle))
    assert code == 1 and out == ""
    assert err == "tinymm: error: unexpected RuntimeError: disk on fire (rerun with -v to see the traceback)\n"
    code, out, err = _run(capsys, "-v", "info", str(tiny_bundle), "--json")
    assert code == 1 and "Traceback" in err and json.loads(out)["error"]["type"] == "RuntimeError"


def test_verbose_logs_to_stderr(tiny_bundle: Path, capsys) -> None:
    code, _, err = _run(capsys, "info", str(tiny_bundle), "-vv")
    assert code == 0 and "tinymm: DEBUG: tinymm.bundle" in err


def test_subprocess_entry_points(tiny_bundle: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "tinymm.cli", "info", str(tiny_bundle), "--json"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["manifest"]["name"] == "tiny"
    bad = subprocess.run([sys.executable, "-m", "tinymm", "info", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 4 and bad.stdout == ""
    assert bad.stderr.startswith("tinymm: error: bundle") and bad.stderr.count("\n") == 1
