"""The int8 gate on the task metric: runtime-pipeline evaluation, refusals, lower-is-better WER, model card.

Tiny random-weight checkpoints and tiny test splits written here (4 scenes, 6 clips of noise):
the metrics are meaningless, the plumbing is what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.requires_torch,
              pytest.mark.filterwarnings("ignore::tinymm.preprocess.text.TruncationWarning")]  # 24-token context

torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")

import export.bundle_build as bundle_build  # noqa: E402
from export.__main__ import DEFAULT_MAX_DROP as CLI_MAX_DROP  # noqa: E402
from export.__main__ import main as export_main  # noqa: E402
from export.accuracy_gate import DEFAULT_MAX_DROP, run_int8_gate  # noqa: E402
from export.golden import record_golden  # noqa: E402
from export.onnx_common import SampleOptions, export_onnx  # noqa: E402
from export.task_eval import GateOptions, TaskScores, agreement, make_task_evaluator, missing_test_split  # noqa: E402
import export.task_eval_gate as task_eval_gate  # noqa: E402
from export.task_eval_gate import build_int8_variants  # noqa: E402
from tinymm.bundle import read_bundle  # noqa: E402
from tinymm.errors import EXIT_USAGE  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.data.scene_dataset import build_specs, generate_example, write_dataset  # noqa: E402
from train.data.scene_language import all_labels  # noqa: E402
from train.data.scene_render import RenderConfig  # noqa: E402
from train.data.scene_world import WorldConfig  # noqa: E402
from train.data.speech_dataset import write_wav  # noqa: E402
from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig  # noqa: E402
from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer  # noqa: E402
from train.vlm_tokenizer import scene_corpus, train_tokenizer  # noqa: E402

THREADS = ["--threads", "1", "--no-progress"]
TRANSCRIPTS = ["turn left", "go forward two meters", "stop", "what do you see", "turn right please", "stop"]
INTENTS = [{"action": "turn", "direction": "left"}, None, {"action": "stop"}, None, None, {"action": "stop"}]
SAMPLE_RATE = 16000


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny VLM and speech checkpoints with tokenizers, a 4-scene test split and a 6-clip speech test split."""
    root = tmp_path_factory.mktemp("runs")
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(12)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=24)
    torch.manual_seed(0)
    vlm = VisionLanguageModel(VLMConfig.tiny())
    save_checkpoint(root / "vlm" / "final", vlm, vlm.config, step=1)
    write_dataset(root / "scenes", build_specs({"test": 4}, size=64, seed=0), workers=1, progress=False)
    write_dataset(root / "val_only", build_specs({"val": 2}, size=64, seed=0), workers=1, progress=False)
    train_speech_tokenizer(TRANSCRIPTS, root / "speech" / "tokenizer" / "speech.model",
                           SpeechTokenizerConfig(vocab_size=12, model_type="char"))
    speech = SpeechCTCModel(SpeechConfig.tiny())
    save_checkpoint(root / "speech" / "final", speech, speech.config, step=1)
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


@pytest.fixture(scope="module")
def speech_parts(runs: Path, tmp_path_factory: pytest.TempPathFactory):
    prepared = _prepared(runs, "speech", runs / "speech_data")
    work = tmp_path_factory.mktemp("speech_onnx")
    fp32 = {c: export_onnx(g, work / f"{c}.onnx") for c, g in prepared.graphs.items()}
    return prepared, fp32, record_golden(prepared.graphs, prepared.real_cases), work


class FakeEvaluator:
    """A task metric that moves by `per_int8` points for every int8 file in the model."""

    def __init__(self, metric: str, higher_is_better: bool, base: float, per_int8: float) -> None:
        self.metric, self.higher_is_better, self.base, self.per_int8 = metric, higher_is_better, base, per_int8

    def score(self, paths):
        count = sum(".int8." in Path(p).name for p in paths.values())
        return TaskScores(self.metric, self.higher_is_better, {self.metric: self.base + self.per_int8 * count}, ())

    def main(self, paths):
        return self.score(paths).main


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


def test_vlm_runtime_pipeline_matches_torch_on_the_test_split(runs: Path, tmp_path: Path) -> None:
    prepared = _prepared(runs, "vlm", runs / "scenes")
    evaluator = make_task_evaluator(prepared, runs / "scenes", GateOptions(eval_samples=3, threads=1))
    assert evaluator is not None and evaluator.counts["scenes"] == 3 and evaluator.counts["questions"] > 3
    fp32 = {c: export_onnx(g, tmp_path / f"{c}.onnx") for c, g in prepared.graphs.items()}
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


def test_a_wer_rise_past_the_threshold_refuses_int8(speech_parts, monkeypatch) -> None:
    prepared, fp32, records, work = speech_parts
    monkeypatch.setattr(task_eval_gate, "TASK_MAX_SWEEP", 3)  # each swept node is one quantization
    evaluator = FakeEvaluator("wer", False, base=20.0, per_int8=2.0)  # int8 makes WER 2 points worse
    result = build_int8_variants(prepared, fp32, work, records, evaluator, GateOptions())
    report = result.reports["speech_encoder"]
    assert report["verdict"] == "REFUSED" and not report["shipped"] and report["metric"] == "wer"
    assert report["drop"] == pytest.approx(2.0) and not report["higher_is_better"]
    assert result.files == {}  # nothing to ship: the runtime loads fp32
    sweep = [s for s in report["steps"] if s["phase"] == "sweep"]
    assert len(sweep) == 3  # the nodes were swept (ranked by output error) before refusing
    assert result.combined is not None and result.combined["components"] == []


@pytest.mark.parametrize("per_int8", [-2.0, 0.5])
def test_a_wer_fall_or_a_small_rise_is_accepted(speech_parts, per_int8: float) -> None:
    prepared, fp32, records, work = speech_parts
    result = build_int8_variants(prepared, fp32, work, records, FakeEvaluator("wer", False, 20.0, per_int8),
                                 GateOptions())
    report = result.reports["speech_encoder"]
    assert report["verdict"] == "ACCEPTED" and report["shipped"] and report["drop"] == pytest.approx(per_int8)
    assert result.files["speech_encoder"].name == "speech_encoder.int8.onnx" and result.files["speech_encoder"].is_file()
    assert report["golden_min_cosine"] > 0.99  # the second safety check ran
    assert result.combined["metrics"]["wer"] == pytest.approx(20.0 + per_int8)


def test_the_int8_variant_as_a_whole_is_held_to_the_threshold(runs: Path, tmp_path: Path) -> None:
    prepared = _prepared(runs, "vlm", runs / "scenes")
    fp32 = {c: export_onnx(g, tmp_path / f"{c}.onnx") for c, g in prepared.graphs.items()}
    records = record_golden(prepared.graphs, prepared.real_cases)
    evaluator = FakeEvaluator("vqa_accuracy", True, base=50.0, per_int8=-0.4)  # each alone 0.4, all four 1.6
    result = build_int8_variants(prepared, fp32, tmp_path, records, evaluator, GateOptions())
    assert all(r["verdict"] == "ACCEPTED" for r in result.reports.values())
    shipped = [c for c, r in result.reports.items() if r["shipped"]]
    assert sorted(shipped) == sorted(result.files) and len(shipped) == 2  # 1.6 -> 1.2 -> 0.8 points
    assert result.combined["drop"] == pytest.approx(0.8) and result.combined["components"] == sorted(shipped)
    sent_back = [r for r in result.reports.values() if not r["shipped"]]
    assert all("accepted alone" in r["reason"] for r in sent_back)
    assert all(not (tmp_path / f"{c}.int8.onnx").exists() for c in result.reports if c not in shipped)


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
    assert gate["metric"] == "wer" and gate["max_drop"] == 100.0 and gate["shipped"]
    assert "## Task metrics per precision" in card and "| WER | CER | intent accuracy | bytes loaded |" in card
    for precision in ("fp32", "fp16", "int8"):
        assert f"| {precision} | speech_encoder | " in card
    assert "| torch fp32 (reference) |" in card and "token for token on" in card
    assert list(task["int8_variant"]["components"]) == ["speech_encoder"] and task["int8_variant"]["max_drop"] == 100.0
    assert "The int8 variant as a whole (int8: speech_encoder; fp32 elsewhere): `wer`" in card
    assert "## INT8 accuracy gate" in card and "| speech_encoder | wer |" in card


def test_without_a_test_split_the_gate_falls_back_to_golden_cosine(runs: Path) -> None:
    out = runs / "bundles" / "vlm-fallback"
    code = export_main([str(runs / "vlm" / "final"), "--out", str(out), "--precision", "int8",
                        "--data", str(runs / "val_only"), "--calibration", "2", *THREADS])
    assert code == 0
    with read_bundle(out) as bundle:
        task = bundle.manifest.provenance["export"]["task_eval"]
        gates = bundle.manifest.provenance["export"]["parity"]["int8_gate"]
        card = bundle.model_card_path.read_text()
    assert task["metric"] == "golden cosine" and "no test split" in task["reason"]
    assert {g["metric"] for g in gates.values()} == {"golden cosine"}
    assert 'Not measured (no task metric: no test split' in card and '(metric "golden cosine")' in card
