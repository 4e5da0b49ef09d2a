"""The int8 gate on the task metrics: runtime-pipeline evaluation, each component judged on the metrics
it can change, refusals, lower-is-better WER, the int8 variant as a whole, model card.

Tiny random-weight checkpoints and tiny test splits written here (4 scenes, 6 clips of noise):
the metrics are meaningless, the plumbing is what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.requires_torch,
              pytest.mark.filterwarnings("ignore::tinymm.preprocess.text.TruncationWarning")]  # 40-token context

torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
onnx = pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")

import export.bundle_build as bundle_build  # noqa: E402
from export.__main__ import DEFAULT_MAX_DROP as CLI_MAX_DROP  # noqa: E402
from export.__main__ import main as export_main  # noqa: E402
from export.accuracy_gate import DEFAULT_MAX_DROP, run_int8_gate  # noqa: E402
from export.golden import record_golden  # noqa: E402
from export.onnx_common import ExportOptions, SampleOptions, export_onnx  # noqa: E402
from export.task_eval import GateOptions, TaskScores, agreement, metric_drop  # noqa: E402
import export.task_eval_gate as task_eval_gate  # noqa: E402
import export.task_eval_vlm as task_eval_vlm  # noqa: E402
from export.task_eval_card import gate_lines  # noqa: E402
from export.task_eval_gate import LARGEST_DROP, build_int8_variants  # noqa: E402
from export.task_evaluators import make_task_evaluator, missing_test_split  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from tinymm.bundle import read_bundle  # noqa: E402
from tinymm.errors import EXIT_USAGE  # noqa: E402
from train.data.scene_dataset import build_specs, write_dataset  # noqa: E402
from train.data.speech_dataset import write_wav  # noqa: E402
from tiny_runs import write_tiny_checkpoints  # noqa: E402

THREADS = ["--threads", "1", "--no-progress"]
TRANSCRIPTS = ["turn left", "go forward two meters", "stop", "what do you see", "turn right please", "stop"]
INTENTS = [{"action": "turn", "direction": "left"}, None, {"action": "stop"}, None, None, {"action": "stop"}]
SAMPLE_RATE = 16000
FAST_EXPORT = ExportOptions(exporter="torchscript")  # ~20x faster to run than dynamo; the graphs are the same ops


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny VLM and speech checkpoints with tokenizers, a 4-scene test split and a 6-clip speech test split."""
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("runs"), TRANSCRIPTS)
    write_dataset(root / "scenes", build_specs({"test": 4}, size=64, seed=0), workers=1, progress=False)
    write_dataset(root / "val_only", build_specs({"val": 2}, size=64, seed=0), workers=1, progress=False)
    clips = root / "speech_data" / "speech" / "test"
    (clips / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(clips / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, (text, intent) in enumerate(zip(TRANSCRIPTS, INTENTS)):
            write_wav(clips / "audio" / f"{i}.wav", 0.1 * rng.standard_normal(SAMPLE_RATE // 2 + 800 * i), SAMPLE_RATE)
            f.write(json.dumps({"path": f"audio/{i}.wav", "transcript": text, "intent": intent}) + "\n")
    return root


def _prepared(runs: Path, kind: str, data: Path):
    request = bundle_build.ExportRequest(checkpoint=runs / kind / "final", out=runs / "unused",
                                         samples=SampleOptions(data_dir=data, calibration_samples=3))
    return bundle_build.prepare(request)


def _exported_parts(runs: Path, kind: str, data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(prepared, fp32 ONNX paths per component, golden pairs, work dir) of the tiny `kind` checkpoint."""
    prepared = _prepared(runs, kind, data)
    work = tmp_path_factory.mktemp(f"{kind}_onnx")
    fp32 = {c: export_onnx(g, work / f"{c}.onnx", FAST_EXPORT) for c, g in prepared.graphs.items()}
    return prepared, fp32, record_golden(prepared.graphs, prepared.real_cases), work


@pytest.fixture(scope="module")
def speech_parts(runs: Path, tmp_path_factory: pytest.TempPathFactory):
    return _exported_parts(runs, "speech", runs / "speech_data", tmp_path_factory)


class FakeEvaluator:
    """Task metrics (`base`: metric -> points) that move by effects[component][metric] points when that
    component's file is an int8 one; the gate metrics per component are `gate` (default: the main metric)."""

    def __init__(self, base, effects, gate=None, lower_is_better=()) -> None:
        self.metric = next(iter(base))
        self.base, self.effects, self.gate, self.lower_is_better = base, effects, gate or {}, lower_is_better
        self.higher_is_better = self.higher_is_better_of(self.metric)
        self.calls = 0

    def higher_is_better_of(self, metric):
        return metric not in self.lower_is_better

    def gate_metrics(self, component):
        return self.gate.get(component, (self.metric,))

    def score(self, paths):
        self.calls += 1
        metrics = dict(self.base)
        for component, path in paths.items():
            if ".int8." in Path(path).name:
                for metric, delta in self.effects.get(component, {}).items():
                    metrics[metric] += delta
        return TaskScores(self.metric, self.higher_is_better, metrics, ())

    def main(self, paths):
        return self.score(paths).main


def _wer(delta: float) -> FakeEvaluator:
    """WER 20 points, `delta` more with the int8 speech encoder (lower is better)."""
    return FakeEvaluator({"wer": 20.0, "cer": 8.0}, {"speech_encoder": {"wer": delta}}, lower_is_better=("wer", "cer"))


@pytest.fixture(scope="module")
def vlm_parts(runs: Path, tmp_path_factory: pytest.TempPathFactory):
    return _exported_parts(runs, "vlm", runs / "scenes", tmp_path_factory)


VLM_BASE = {"vqa_accuracy": 50.0, "caption_fact_accuracy": 10.0, "zero_shot_top1": 40.0}


def test_options_and_helpers_check_their_values(runs: Path) -> None:
    assert CLI_MAX_DROP == DEFAULT_MAX_DROP == GateOptions().max_metric_drop == 1.0
    assert GateOptions().samples_for("vision-language") == 32 and GateOptions(eval_samples=5).samples_for("speech") == 5
    for bad in ({"max_metric_drop": -1.0}, {"max_metric_drop": float("nan")}, {"eval_samples": 0}, {"threads": -1}):
        with pytest.raises(ValueError):
            GateOptions(**bad)
    assert missing_test_split("vision-language", None) == "no --data given"
    assert "no test split" in missing_test_split("vision-language", runs / "val_only")
    assert missing_test_split("vision-language", runs / "scenes") is None
    assert missing_test_split("speech", runs / "speech_data") is None
    assert agreement([(1, 2), (3,)], [(1, 2), (4,)]) == {"outputs": 2, "identical": 1, "rate": 50.0}
    assert metric_drop(True, 50.0, 48.0) == 2.0 and metric_drop(False, 20.0, 22.0) == 2.0
    assert metric_drop(False, 20.0, 19.0) == -1.0  # a WER fall is a negative drop


def test_the_rank_callback_orders_the_sweep_only_when_one_is_needed() -> None:
    calls = []

    def rank(int8_path: Path, nodes):
        calls.append((int8_path, list(nodes)))
        return list(reversed(nodes))  # "c" first

    def build(excluded):
        return Path("int8-" + "-".join(excluded) + ".onnx")

    def evaluate(path: Path) -> float:
        return {"fp32": 80.0, "int8-c": 79.5}.get(path.stem, 70.0)

    report = run_int8_gate(Path("fp32.onnx"), build, evaluate, candidates=["a", "b", "c"], max_sweep=1, rank=rank)
    assert calls == [(Path("int8-.onnx"), ["a", "b", "c"])]
    assert report.accepted and report.excluded == ("c",)  # found although max_sweep=1: it was ranked first
    calls.clear()
    assert run_int8_gate(Path("fp32.onnx"), build, lambda path: 80.0, candidates=["a"], rank=rank).accepted
    assert calls == []  # no sweep, no ranking


def test_a_bad_flag_is_a_usage_error(runs: Path, capsys) -> None:
    code = export_main([str(runs / "speech" / "final"), "--out", str(runs / "x"), "--max-metric-drop", "-1", *THREADS])
    assert code == EXIT_USAGE and "max_metric_drop" in capsys.readouterr().err


def test_vlm_runtime_pipeline_matches_torch_on_the_test_split(vlm_parts, runs: Path, tmp_path: Path) -> None:
    prepared, fp32, _, _ = vlm_parts
    evaluator = make_task_evaluator(prepared, runs / "scenes", GateOptions(eval_samples=3, threads=1))
    assert evaluator is not None and evaluator.counts["scenes"] == 3 and evaluator.counts["questions"] > 3
    assert evaluator.counts["zero_shot_scenes"] == 4  # max(3, ZERO_SHOT_SCENES) capped at the 4-scene split
    assert set(evaluator.metric_items) == {key for key, _ in evaluator.columns}
    assert evaluator.metric_items["zero_shot_top1"].startswith("4 scenes")
    scores = evaluator.score(fp32)
    assert scores.metric == "vqa_accuracy" and scores.higher_is_better
    assert {"vqa_accuracy", "caption_fact_accuracy", "zero_shot_top1"} <= set(scores.metrics)
    assert all(0.0 <= v <= 100.0 for v in scores.metrics.values() if v is not None)
    assert len(scores.outputs) == 3 + evaluator.counts["questions"]  # one caption per scene, one answer per question
    assert evaluator.agreement(fp32) == {"outputs": len(scores.outputs), "identical": len(scores.outputs), "rate": 100.0}
    assert evaluator.torch_scores().metrics == pytest.approx(scores.metrics)
    copies = {c: tmp_path / f"copy-{p.name}" for c, p in fp32.items()}
    for c, p in fp32.items():
        copies[c].write_bytes(p.read_bytes())
    assert evaluator.score(copies) is scores  # a model is evaluated once, whatever its files are called


def test_each_vlm_component_is_judged_on_the_metrics_it_can_change(vlm_parts, runs: Path, monkeypatch) -> None:
    prepared, fp32, _, work = vlm_parts
    evaluator = make_task_evaluator(prepared, runs / "scenes", GateOptions(eval_samples=2, threads=1))
    assert evaluator.gate_metrics("text_encoder") == ("zero_shot_top1",)
    assert evaluator.gate_metrics("image_encoder") == ("vqa_accuracy", "zero_shot_top1")
    assert evaluator.gate_metrics("decoder_first") == evaluator.gate_metrics("decoder_with_past") == ("vqa_accuracy",)
    assert evaluator.higher_is_better_of("zero_shot_top1")
    calls = {"generate": 0, "zero_shot": 0}

    def counted(name: str):
        real = getattr(evaluator, f"_{name}")

        def spy(pipeline):
            calls[name] += 1
            return real(pipeline)
        return spy

    for name in calls:
        monkeypatch.setattr(evaluator, f"_{name}", counted(name))
    before = evaluator.score(fp32)
    other_text = work / "text_encoder.other.onnx"  # a text encoder with its largest weight negated
    model = onnx.load(fp32["text_encoder"])
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    biggest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(biggest), biggest.name))
    onnx.save(model, other_text)
    after = evaluator.score({**fp32, "text_encoder": other_text})
    assert calls == {"generate": 1, "zero_shot": 2}  # the text encoder cannot move captions or answers
    assert {k: v for k, v in after.metrics.items() if k != "zero_shot_top1"} == \
        {k: v for k, v in before.metrics.items() if k != "zero_shot_top1"}
    assert after.outputs == before.outputs


def test_a_text_encoder_that_breaks_zero_shot_is_refused_though_vqa_holds(vlm_parts, monkeypatch) -> None:
    prepared, fp32, records, work = vlm_parts
    monkeypatch.setattr(task_eval_gate, "TASK_MAX_SWEEP", 2)  # each swept node is one quantization
    evaluator = FakeEvaluator(VLM_BASE, {"text_encoder": {"zero_shot_top1": -5.0}}, task_eval_vlm.GATE_METRICS)
    result = build_int8_variants(prepared, fp32, work, records, evaluator, GateOptions())
    text = result.reports["text_encoder"]
    assert text["verdict"] == "REFUSED" and not text["shipped"] and "text_encoder" not in result.files
    assert text["score"] == LARGEST_DROP and list(text["metrics"]) == ["zero_shot_top1"]
    assert text["metrics"]["zero_shot_top1"] == {"fp32": 40.0, "int8": 35.0, "drop": 5.0, "higher_is_better": True}
    assert "zero_shot_top1 40 -> 35" in text["reason"]
    assert len([s for s in text["steps"] if s["phase"] == "sweep"]) == 2
    image = result.reports["image_encoder"]
    assert image["shipped"] and list(image["metrics"]) == ["vqa_accuracy", "zero_shot_top1"]
    assert all(result.reports[c]["shipped"] for c in ("image_encoder", "decoder_first", "decoder_with_past"))
    assert result.combined["components"] == ["decoder_first", "decoder_with_past", "image_encoder"]
    table = "\n".join(gate_lines(result.reports))
    assert "| text_encoder | zero_shot_top1 | 40.00 | 35.00 | 5.00 (1.00) | none | REFUSED | no |" in table
    assert "| image_encoder | vqa_accuracy | 50.00 | 50.00 |" in table and "| image_encoder | zero_shot_top1 |" in table
    assert "- text_encoder: not shipped: int8 gate REFUSED" in table


def test_an_image_encoder_is_refused_when_either_of_its_metrics_drops(vlm_parts, monkeypatch) -> None:
    prepared, fp32, records, work = vlm_parts
    monkeypatch.setattr(task_eval_gate, "TASK_MAX_SWEEP", 0)
    only = {"image_encoder": fp32["image_encoder"]}  # gate this component alone (the fake needs no other file)
    for effect in ({"zero_shot_top1": -3.0}, {"vqa_accuracy": -3.0}):
        evaluator = FakeEvaluator(VLM_BASE, {"image_encoder": effect}, task_eval_vlm.GATE_METRICS)
        report = build_int8_variants(prepared, only, work, records, evaluator, GateOptions()).reports["image_encoder"]
        assert report["verdict"] == "REFUSED" and report["drop"] == pytest.approx(3.0), effect
        assert not report["shipped"] and {m: v["drop"] for m, v in report["metrics"].items()} == \
            pytest.approx({"vqa_accuracy": 0.0, "zero_shot_top1": 0.0, **{m: -d for m, d in effect.items()}})


def test_the_int8_variant_is_checked_on_every_metric_of_every_int8_component(vlm_parts) -> None:
    prepared, fp32, records, work = vlm_parts
    effects = {"image_encoder": {"zero_shot_top1": -0.6, "vqa_accuracy": -0.1},
               "text_encoder": {"zero_shot_top1": -0.7},
               "decoder_first": {"vqa_accuracy": -0.4}, "decoder_with_past": {"vqa_accuracy": -0.4}}
    evaluator = FakeEvaluator(VLM_BASE, effects, task_eval_vlm.GATE_METRICS)
    result = build_int8_variants(prepared, fp32, work, records, evaluator, GateOptions())
    assert all(r["verdict"] == "ACCEPTED" for r in result.reports.values())  # each alone within 1 point
    # together: zero-shot drops 1.3 points (VQA 0.9): the text encoder, which lost the most zero-shot alone, goes back
    text = result.reports["text_encoder"]
    assert not text["shipped"] and "accepted alone" in text["reason"] and "zero_shot_top1 1.3" in text["reason"]
    assert not (work / "text_encoder.int8.onnx").exists() and "text_encoder" not in result.files
    combined = result.combined
    assert combined["components"] == ["decoder_first", "decoder_with_past", "image_encoder"]
    assert combined["gate_metrics"] == ["vqa_accuracy", "zero_shot_top1"]
    assert combined["drops"] == pytest.approx({"vqa_accuracy": 0.9, "zero_shot_top1": 0.6})
    assert combined["drop"] == pytest.approx(0.9)


def test_a_wer_rise_past_the_threshold_refuses_int8(speech_parts, monkeypatch) -> None:
    prepared, fp32, records, work = speech_parts
    monkeypatch.setattr(task_eval_gate, "TASK_MAX_SWEEP", 3)  # each swept node is one quantization
    result = build_int8_variants(prepared, fp32, work, records, _wer(2.0), GateOptions())  # WER 2 points worse
    report = result.reports["speech_encoder"]
    assert report["verdict"] == "REFUSED" and not report["shipped"] and list(report["metrics"]) == ["wer"]
    assert report["metrics"]["wer"] == {"fp32": 20.0, "int8": 22.0, "drop": 2.0, "higher_is_better": False}
    assert report["drop"] == pytest.approx(2.0) and report["score"] == LARGEST_DROP
    assert result.files == {}  # nothing to ship: the runtime loads fp32
    sweep = [s for s in report["steps"] if s["phase"] == "sweep"]
    assert len(sweep) == 3  # the nodes were swept (ranked by output error) before refusing
    assert result.combined is not None and result.combined["components"] == []


@pytest.mark.parametrize("per_int8", [-2.0, 0.5])
def test_a_wer_fall_or_a_small_rise_is_accepted(speech_parts, per_int8: float) -> None:
    prepared, fp32, records, work = speech_parts
    result = build_int8_variants(prepared, fp32, work, records, _wer(per_int8), GateOptions())
    report = result.reports["speech_encoder"]
    assert report["verdict"] == "ACCEPTED" and report["shipped"] and report["drop"] == pytest.approx(per_int8)
    assert result.files["speech_encoder"].name == "speech_encoder.int8.onnx" and result.files["speech_encoder"].is_file()
    assert report["golden_min_cosine"] > 0.99  # the second safety check ran
    assert result.combined["metrics"]["wer"] == pytest.approx(20.0 + per_int8)
    assert result.combined["drops"] == pytest.approx({"wer": per_int8})


def test_speech_export_gates_on_wer_and_writes_the_card(runs: Path) -> None:
    out = runs / "bundles" / "speech"
    code = export_main([str(runs / "speech" / "final"), "--out", str(out), "--precision", "fp32,fp16,int8",
                        "--data", str(runs / "speech_data"), "--calibration", "3", "--eval-samples", "5",
                        "--max-metric-drop", "100", *THREADS])
    assert code == 0
    with read_bundle(out) as bundle:
        task = bundle.manifest.provenance["export"]["task_eval"]
        gate = bundle.manifest.provenance["export"]["parity"]["int8_gate"]["speech_encoder"]
        card = bundle.model_card_path.read_text()
        assert bundle.manifest.components["speech_encoder"].precisions == ("fp32", "fp16", "int8")
    assert task["metric"] == "wer" and task["higher_is_better"] is False and task["counts"]["clips"] == 5
    assert list(task["precisions"]) == ["fp32", "fp16", "int8"]
    assert task["torch_agreement"]["outputs"] == 5 and task["torch"]["metrics"]["wer"] is not None
    assert list(gate["metrics"]) == ["wer"] and gate["max_drop"] == 100.0 and gate["shipped"]
    assert "## Task metrics per precision" in card and "| WER | CER | intent accuracy | bytes loaded |" in card
    for precision in ("fp32", "fp16", "int8"):
        assert f"| {precision} | speech_encoder | " in card
    assert "| torch fp32 (reference) |" in card and "token for token on" in card
    assert list(task["int8_variant"]["components"]) == ["speech_encoder"] and task["int8_variant"]["max_drop"] == 100.0
    assert "The int8 variant as a whole (int8: speech_encoder; fp32 elsewhere), on every metric its int8 " \
           "components were gated on: `wer`" in card
    assert "test items per metric: WER: 5 clips; CER: 5 clips; intent accuracy: " in card
    assert "The int8 gate judges each component on the metrics it can change: speech_encoder on `wer`." in card
    assert {c: list(m) for c, m in task["gate_metrics"].items()} == {"speech_encoder": ["wer"]}
    assert gate["metrics"]["wer"]["fp32"] == task["precisions"]["fp32"]["metrics"]["wer"]
    assert "## INT8 accuracy gate" in card and "| speech_encoder | wer |" in card


def test_without_a_test_split_the_gate_falls_back_to_golden_cosine(runs: Path) -> None:
    out = runs / "bundles" / "vlm-fallback"
    code = export_main([str(runs / "vlm" / "final"), "--out", str(out), "--precision", "int8",
                        "--data", str(runs / "val_only"), "--calibration", "2", "--exporter", "torchscript",
                        *THREADS])
    assert code == 0
    with read_bundle(out) as bundle:
        task = bundle.manifest.provenance["export"]["task_eval"]
        gates = bundle.manifest.provenance["export"]["parity"]["int8_gate"]
        card = bundle.model_card_path.read_text()
    assert task["metric"] == "golden cosine" and "no test split" in task["reason"]
    assert {g["score"] for g in gates.values()} == {"golden cosine"}
    assert all(list(g["metrics"]) == ["golden cosine"] for g in gates.values())
    assert "| text_encoder | golden cosine | 100.00 |" in card
    assert 'Not measured (no task metric: no test split' in card and '(metric "golden cosine")' in card
