"""benchmarks/hf_families_speed.py's timing and report code on tiny CLIP, SigLIP and SmolVLM bundles
(the study itself exports the real-size models; here nothing of real size is built)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from benchmarks import hf_families_speed as study  # noqa: E402
from tiny_contrastive import make_clip, make_siglip  # noqa: E402
from tiny_smolvlm import build_source  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory):
    from export.families import HFExportRequest, export_source

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf-speed")
    sources = {"clip": make_clip(root / "clip-src"), "siglip": make_siglip(root / "siglip-src"),
               "smolvlm": build_source(root / "smolvlm-src").directory}
    for family, source in sources.items():
        # a permissive gate: the point is that int8 components exist to be timed
        export_source(HFExportRequest(source=source, out=root / family, precisions=("fp32", "int8"), progress=False,
                                      eval_samples=4, max_metric_drop=100.0, command="test"))
    yield {family: (source, root / family) for family, source in sources.items()}
    torch.set_num_threads(threads)


def test_study_reports_every_task_and_variant(tiny_bundles, tmp_path):
    bundles = {**tiny_bundles, "smolvlm" + study.UNGATED: tiny_bundles["smolvlm"]}  # the extra variant (int8 ships here)
    doc = study.run_study(bundles, [1], runs=2, warmup=0, decode_steps=2)
    doc.update({"command": "test", "machine_summary": "test machine", "configs": study.CONFIGS,
                "load_average": {"start": [0.0] * 3, "end": [0.0] * 3}})
    paths = study.write_report(doc, tmp_path, "speed")
    latency = doc["threads"]["1"]["latency"]
    assert list(latency) == list(study.TASKS)
    for task, variants in latency.items():
        extra = (study.EXTRA,) if task.startswith("smolvlm") else ()
        assert sorted(variants) == sorted((*study.VARIANTS, *extra)), task
        expected = 2 * 2 if task == "smolvlm-decode" else 2  # decode: steps per call x runs
        for variant, entry in variants.items():
            assert entry["total"]["n"] == expected and entry["total"]["p50"] > 0, (task, variant)
            if variant.startswith("tinymm"):
                # the clock saw onnxruntime's runs, and they fit inside the end-to-end time
                assert 0 < entry["onnxruntime"]["p50"] <= entry["total"]["p50"], (task, variant)
    targets = doc["threads"]["1"]["targets"]
    assert len(targets) == 2 * len(study.TASKS) + 2  # and one informational row per SmolVLM task
    assert "int8" in doc["loaded"]["clip-image"]["tinymm-int8"]["image_encoder"]
    assert "int8" in doc["loaded"]["smolvlm-decode"][study.EXTRA]["decoder_with_past"]
    markdown = paths["md"].read_text()
    for task, variants in latency.items():
        for variant in variants:
            assert f"| {task} | {study.LABELS[variant]} |" in markdown
    assert json.loads(paths["json"].read_text())["threads"]["1"]["latency"].keys() == latency.keys()
    assert paths["png"].stat().st_size > 0
