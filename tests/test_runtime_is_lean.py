"""The runtime must stay installable and importable without torch, train/ or export/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_TOP_LEVEL = ("torch", "train", "export")
RUNTIME_MODULES = (
    "tinymm",
    "tinymm.errors",
    "tinymm.bundle",
    "tinymm.cli",
    "tinymm.preprocess.config",
    "tinymm.preprocess.image",
    "tinymm.preprocess.audio",
    "tinymm.preprocess.text",
    "tinymm.preprocess.tokenizer",
    "tinymm.backends",
    "tinymm.backends.base",
    "tinymm.backends.onnxruntime",
    "tinymm.backends.engine_cache",
    "tinymm.decoding",
    "tinymm.decoding.whisper_task",
    "tinymm.families.whisper",
    "tinymm.pipelines",
    "tinymm.streams",
    "tinymm.bench",
    "tinymm.families",
    "tinymm.robot.intent",
    "tinymm.robot.grammar",
    "tinymm.robot.demo_checks",
)


def _imported_in_subprocess(code: str) -> list[str]:
    """Run `code` in a fresh interpreter and return the top-level modules it imported."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_runtime_module_pulls_no_torch_train_or_export():
    imported = _imported_in_subprocess("\n".join(f"import {m}" for m in RUNTIME_MODULES))
    assert not set(imported) & set(FORBIDDEN_TOP_LEVEL), imported


def test_import_tinymm_is_cheap():
    # Heavy libraries load only when a function needs them, so `import tinymm` stays fast.
    imported = set(_imported_in_subprocess("import tinymm"))
    assert not imported & {"cv2", "onnxruntime", "sentencepiece", "soxr", "numpy", "torch"}, imported


def test_no_runtime_source_file_imports_torch_train_or_export():
    offenders = []
    for path in sorted((ROOT / "tinymm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_TOP_LEVEL]
    assert not offenders


def test_runtime_dependencies_exclude_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]]
    assert "torch" not in runtime
    assert set(runtime) == {"numpy", "onnxruntime", "opencv-python-headless", "sentencepiece", "soxr", "tokenizers"}, (
        "a new runtime dependency needs its reason in README.md 'Dependencies' and here"
    )
