"""benchmarks/side_by_side.py on tiny checkpoints: the plumbing, the summaries and the report (never speed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# The tiny character tokenizer cuts the scene's question to fit the tiny decoder's context.
pytestmark = [pytest.mark.requires_torch, pytest.mark.filterwarnings("ignore:prompt 'ask' is")]

torch = pytest.importorskip("torch", reason="the side-by-side study runs the train/ models in torch")
pytest.importorskip("onnx", reason="the study exports checkpoints with python -m export, which needs onnx")

from benchmarks.side_by_side import (  # noqa: E402
    TARGET_SPEEDUP, StudyOptions, _targets, render_markdown, run_study, summarize_variant, write_outputs,
)
from benchmarks.variants import TORCH, Measurement, Variant, interleave  # noqa: E402
from tinymm.backends.base import FeedChecker, TensorSpec, check_feeds  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.data.scene_dataset import generate_example  # noqa: E402
from train.data.scene_language import all_labels  # noqa: E402
from train.data.scene_render import RenderConfig  # noqa: E402
from train.data.scene_world import WorldConfig  # noqa: E402
from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig  # noqa: E402
from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer  # noqa: E402
from train.vlm_tokenizer import scene_corpus, train_tokenizer  # noqa: E402

TRANSCRIPTS = ["turn left", "go forward two meters", "stop", "what do you see", "turn right please"]
VARIANTS = (TORCH, "ort-fp32", "ort-int8")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, StudyOptions]:
    """The whole study, once, on tiny checkpoints: 2 timed rounds, no cold start (a fresh process)."""
    root = tmp_path_factory.mktemp("side_by_side")
    notes = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(12)]
    train_tokenizer(scene_corpus(notes, all_labels()), root / "vlm", vocab_size=64, context_length=64)
    torch.manual_seed(0)
    vlm = VisionLanguageModel(VLMConfig.tiny(max_text_len=64))  # room for the ask prompt
    save_checkpoint(root / "vlm" / "final", vlm, vlm.config, step=1)
    train_speech_tokenizer(TRANSCRIPTS, root / "speech" / "tokenizer" / "speech.model",
                           SpeechTokenizerConfig(vocab_size=12, model_type="char"))
    speech = SpeechCTCModel(SpeechConfig.tiny())
    save_checkpoint(root / "speech" / "final", speech, speech.config, step=1)
    threads = torch.get_num_threads()
    options = StudyOptions(vlm_checkpoint=root / "vlm" / "final", speech_checkpoint=root / "speech" / "final",
                           runs=2, warmup=1, threads=1, out=root / "results", work=root / "work",
                           cold_start=False, plots=False, command="pytest side-by-side",
                           exporter="torchscript")  # the faster exporter: this test checks plumbing
    try:
        return run_study(options), options
    finally:
        torch.set_num_threads(threads)  # the torch variant sets it for the process


def test_every_task_times_every_variant_with_stages(study) -> None:
    result, _ = study
    assert list(result["tasks"]) == ["caption", "ask", "classify", "transcribe"]
    for task, variants in result["tasks"].items():
        assert list(variants) == list(VARIANTS)
        for name, v in variants.items():
            assert v["latency_ms"]["count"] == 2 and v["latency_ms"]["p50_ms"] > 0
            assert "encode" in v["stages_ms"] and "preprocess" in v["stages_ms"]
            if name != TORCH:
                assert 0 < v["model_ms_p50"] <= v["latency_ms"]["max_ms"]
                assert v["speedup_vs_torch"] > 0 and v["speedup_vs_torch_paired"] > 0
                assert v["overhead_share"] < 1 and v["glue_share"] <= v["overhead_share"]
    caption = result["tasks"]["caption"]
    for v in caption.values():  # a decoder ran: prefill, per-token steps and a token count
        assert v["tokens_per_run"] and v["tokens_per_s"] > 0 and "prefill" in v["stages_ms"]
    # fp32 onnxruntime runs the same weights as torch eager: the same greedy caption
    assert caption["ort-fp32"]["tokens_match_torch"] is True
    assert result["tasks"]["classify"][TORCH]["tokens_per_run"] is None


def test_study_reports_memory_roofline_and_targets(study) -> None:
    result, _ = study
    rss = result["peak_rss"]
    assert rss["torch_imported"] is False and rss["peak_mb"] > 0
    assert rss["after_inference"]["VmHWM"] >= rss["after_load"]["VmRSS"]
    assert [(r["component"], r["precision"]) for r in result["roofline"]] == [
        (c, p) for c in ("image_encoder", "decoder_with_past", "speech_encoder") for p in ("fp32", "int8")]
    for row in result["roofline"]:
        assert row["gflop_per_call"] > 0 and row["achieved_gflops"] > 0 and row["ort_gemm_gflops"] > 0
        assert row["unresolved_nodes"] == []
    names = [t["target"] for t in result["targets"]]
    assert len(names) == 5 and all(isinstance(t["met"], bool) for t in result["targets"])  # no cold start asked
    assert result["cold_start"] is None and result["load_average"]["start"]
    assert result["settings"]["torch"] == torch.__version__


def test_outputs_are_written_and_the_table_renders(study, tmp_path: Path) -> None:
    result, options = study
    options = StudyOptions(**{**options.__dict__, "out": tmp_path})
    written = write_outputs(result, options)
    assert {p.name for p in written} == {"side_by_side_threads1.json", "side_by_side_threads1.md"}
    assert json.loads((tmp_path / "side_by_side_threads1.json").read_text())["command"] == "pytest side-by-side"
    text = (tmp_path / "side_by_side_threads1.md").read_text()
    assert "`pytest side-by-side`" in text and result["machine_summary"] in text
    rows = [line for line in text.splitlines() if line.startswith("| caption | ")]
    assert len(rows) == 2 * len(VARIANTS)  # the end-to-end and the stage tables
    assert "| decoder_with_past | int8 |" in text and "## Targets" in text


def test_interleave_rotates_the_first_variant_and_drops_warmup() -> None:
    calls: list[str] = []

    def variant(name: str) -> Variant:
        return Variant(name, name, lambda: calls.append(name) or Measurement(0.001, {}))

    out = interleave([variant("a"), variant("b"), variant("c")], runs=2, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(runs) for name, runs in out.items()} == {"a": 2, "b": 2, "c": 2}


def test_summaries_give_ratios_overhead_and_judge_the_targets() -> None:
    torch_runs = [Measurement(0.300, {"encode": 0.3}), Measurement(0.600, {"encode": 0.6})]
    fast = [Measurement(0.100, {"preprocess": 0.01, "encode": 0.09}, model_s=0.08),
            Measurement(0.100, {"preprocess": 0.01, "encode": 0.09}, model_s=0.08)]
    summary = summarize_variant("tinymm ORT int8", fast, torch_runs)
    assert summary["speedup_vs_torch"] == pytest.approx(4.5)  # p50 450 ms / 100 ms
    assert summary["speedup_vs_torch_paired"] == pytest.approx(4.5)  # median of 3x and 6x
    assert summary["overhead_share"] == pytest.approx(0.2) and summary["glue_share"] == pytest.approx(0.1)
    tasks = {"caption": {"ort-int8": summary}, "transcribe": {"ort-int8": {**summary, "speedup_vs_torch": 2.9}}}
    rows = _targets(tasks, {"median_first_result_s": 1.5}, {"peak_mb": 120.0})
    assert [r["met"] for r in rows] == [True, False, False, False, False, True]
    assert rows[2]["required"] == f">= {TARGET_SPEEDUP:g}x" and rows[2]["measured"] == "2.90x"


def test_render_needs_no_measurement_beyond_the_json(study) -> None:
    result, _ = study
    again = json.loads(json.dumps(result))  # the report renders from the written JSON alone
    assert render_markdown(again) == render_markdown(result)


def test_feed_checker_fast_path_only_accepts_what_check_feeds_accepts() -> None:
    specs = (TensorSpec("ids", ("batch", 1), "int64"), TensorSpec("past", ("batch", 4, "past", 8), "float32"))
    checker = FeedChecker(specs)
    good = {"ids": np.zeros((2, 1), np.int64), "past": np.zeros((2, 4, 3, 8), np.float32)}
    assert checker.fast_ok(good)
    check_feeds(specs, good)
    slow = [
        {**good, "ids": np.zeros((2, 1), np.int32)},  # dtype
        {**good, "ids": np.zeros((2, 2), np.int64)},  # fixed size
        {**good, "past": np.zeros((2, 4, 0, 8), np.float32)},  # empty
        {**good, "past": np.zeros((2, 8, 3, 4), np.float32).transpose(0, 3, 2, 1)},  # not contiguous
        {"ids": good["ids"]},  # missing
        {**good, "extra": good["ids"]},  # unexpected
    ]
    assert not any(checker.fast_ok(feeds) for feeds in slow)


def test_study_options_refuse_an_unknown_exporter() -> None:
    with pytest.raises(ValueError, match="exporter='onnxscript'"):
        StudyOptions(exporter="onnxscript")
