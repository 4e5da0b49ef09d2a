"""The latency harness, its reports and ``tinymm bench``, with fake tasks (no model needed).

Timing-sensitive checks use a fake clock where they can; the few real sleeps are checked with
lower bounds and generous upper bounds, never against this machine's speed.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field

import pytest

import tinymm
from tinymm.bench import (
    ColdStartError, collect_machine_facts, measure_cold_start, render_markdown, report_to_dict, result_timings,
    run_benchmark, write_json,
)
from tinymm.bench.harness import BenchOptions, ProgressLine
from tinymm.cli import main
from tinymm.errors import EXIT_BAD_INPUT, EXIT_USAGE


@dataclass(frozen=True)
class FakeTimings:
    """The shape of tinymm.pipelines.results.Timings: milliseconds per stage, decode per step."""

    preprocess_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: tuple[float, ...] = ()
    postprocess_ms: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class FakeCaption:
    text: str
    token_ids: tuple[int, ...]
    timings: FakeTimings = field(default_factory=FakeTimings)


class FakeClock:
    """A clock that only moves when a fake task says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- reading timings from results ------------------------------------------------------------


def test_result_timings_reads_millisecond_fields_and_per_token_decode():
    result = FakeCaption("a red circle", (5, 6, 7), FakeTimings(1.0, 4.0, 2.0, (0.5, 0.5), 0.25))
    t = result_timings(result)
    assert t.stages == pytest.approx({"preprocess": 1e-3, "encode": 4e-3, "prefill": 2e-3, "decode": 1e-3,
                                      "postprocess": 0.25e-3})
    assert "batch_size" not in t.stages  # a count, not a duration
    assert t.tokens == 3 and t.token_times_s == pytest.approx((5e-4, 5e-4))


def test_result_timings_of_mappings_units_and_results_without_timings():
    t = result_timings({"timings": {"encode_s": 0.5, "decode_us": [100.0, 300.0], "total_ms": 9.0}, "num_tokens": 2})
    assert t.stages == pytest.approx({"encode": 0.5, "decode": 4e-4})  # the total is not a stage
    assert t.tokens == 2
    assert result_timings("plain text") == result_timings(None)
    assert result_timings("plain text").stages == {} and result_timings("plain text").tokens is None


def test_tokens_are_not_counted_without_a_decoder():
    # A CTC transcript has token ids but no prefill or decode: no tokens/s for it.
    transcript = FakeCaption("go left", (1, 2, 3), FakeTimings(preprocess_ms=1.0, encode_ms=2.0))
    assert result_timings(transcript).tokens is None


def test_batched_results_share_timings_once_and_separate_timings_add_up():
    shared = FakeTimings(2.0, 8.0, 2.0, (1.0,), 0.0, batch_size=2)
    batch = [FakeCaption("a", (1, 2), shared), FakeCaption("b", (3,), shared)]
    t = result_timings(batch)
    assert t.stages["encode"] == pytest.approx(8e-3)  # once, not twice
    assert t.tokens == 3
    equal_copies = [FakeCaption("a", (1,), FakeTimings(encode_ms=8.0, prefill_ms=1.0, batch_size=2)) for _ in range(2)]
    assert result_timings(equal_copies).stages["encode"] == pytest.approx(8e-3)
    separate = [FakeCaption("a", (1,), FakeTimings(encode_ms=8.0, prefill_ms=1.0)) for _ in range(3)]
    assert result_timings(separate).stages["encode"] == pytest.approx(24e-3)


def test_real_pipeline_results_are_read():
    results = pytest.importorskip("tinymm.pipelines.results", reason="the pipelines are not installed")
    caption = results.CaptionResult("x", (1, 2), -0.1, True, results.Timings(1.0, 2.0, 3.0, (4.0,), 5.0))
    t = result_timings(caption)
    assert set(t.stages) == {"preprocess", "encode", "prefill", "decode", "postprocess"}
    assert sum(t.stages.values()) == pytest.approx(15e-3) and t.tokens == 2


# ---- the benchmark loop ----------------------------------------------------------------------


def test_percentiles_of_known_sleeps():
    sleeps = [0.005, 0.010, 0.020] * 3
    calls = iter(sleeps)
    report = run_benchmark(lambda: time.sleep(next(calls)), runs=len(sleeps), warmup=0, progress=False)
    lat = report.latency
    assert lat.count == 9
    # A sleep never returns early; on a busy machine it may overshoot, hence the generous margins.
    assert 0.005 <= lat.min_s < 0.005 + 0.004 + 0.010
    assert 0.010 <= lat.p50_s < 0.010 + 0.010
    assert lat.max_s >= 0.020
    assert lat.min_s <= lat.p50_s <= lat.p90_s <= lat.p99_s <= lat.max_s
    assert report.stages["overhead"].count == 9  # no stage timings: everything is overhead


def test_warmup_runs_are_excluded():
    clock = FakeClock()
    calls = []

    def task():
        calls.append(1)
        clock.advance(100.0 if len(calls) <= 3 else 1.0)  # the warmup calls are slow

    report = run_benchmark(task, runs=5, warmup=3, progress=False, clock=clock)
    assert len(calls) == 8
    assert report.latency.count == 5
    assert report.latency.max_s == 1.0 and report.elapsed_s == 5.0


def test_stage_timings_add_up_with_overhead_reported():
    clock = FakeClock()

    def task():
        clock.advance(0.0105)  # 10 ms of stages + 0.5 ms that no stage accounts for
        return FakeCaption("x", (1, 2, 3), FakeTimings(1.0, 5.0, 2.0, (0.5, 0.5, 0.5, 0.5), 0.0))

    report = run_benchmark(task, runs=4, warmup=1, progress=False, clock=clock)
    # postprocess took 0 ms in every run: not a stage of this task, so not reported.
    assert list(report.stages) == ["preprocess", "encode", "prefill", "decode", "overhead"]
    assert report.stages["encode"].mean_s == pytest.approx(5e-3)
    assert report.stages["overhead"].mean_s == pytest.approx(0.5e-3)
    assert report.stage_check.ok and report.stage_check.overhead_share == pytest.approx(0.5 / 10.5)
    assert report.token_latency.p50_s == pytest.approx(0.5e-3) and report.token_latency.count == 16


def test_stages_that_do_not_add_up_are_flagged(caplog):
    clock = FakeClock()

    def task():
        clock.advance(0.020)
        return FakeCaption("x", (1,), FakeTimings(encode_ms=5.0, prefill_ms=1.0))  # 14 of 20 ms unaccounted

    with caplog.at_level("WARNING", logger="tinymm.bench"):
        report = run_benchmark(task, runs=3, warmup=0, progress=False, clock=clock, task="caption")
    assert not report.stage_check.ok
    assert "overhead" in caplog.text


def test_throughput_with_batches_and_tokens_per_second():
    clock = FakeClock()
    shared = FakeTimings(encode_ms=100.0, prefill_ms=100.0, decode_ms=(100.0, 100.0, 100.0), batch_size=4)

    def task():
        clock.advance(0.5)
        return [FakeCaption("x", (1, 2, 3, 4), shared) for _ in range(4)]

    report = run_benchmark(task, runs=10, warmup=2, batch=4, progress=False, clock=clock)
    assert report.items == 40 and report.elapsed_s == pytest.approx(5.0)
    assert report.throughput_items_per_s == pytest.approx(8.0)  # 4 items per 0.5 s
    assert report.latency_per_item.p50_s == pytest.approx(0.125)
    assert report.tokens == 160  # 4 results x 4 tokens x 10 runs
    assert report.tokens_per_s == pytest.approx(32.0)
    # 3 decoder steps x 4 sequences in 0.3 s of decode per run.
    assert report.decode_tokens_per_s == pytest.approx(40.0)


def test_bad_counts_are_refused():
    for kwargs in ({"runs": 0, "warmup": 0}, {"runs": 1, "warmup": -1}, {"runs": 1, "warmup": 0, "batch": 0}):
        with pytest.raises(ValueError):
            run_benchmark(lambda: None, progress=False, **kwargs)
    with pytest.raises(ValueError):
        BenchOptions(runs=True)


def test_task_errors_propagate():
    def task():
        raise tinymm.InputError("broken input")

    with pytest.raises(tinymm.InputError):
        run_benchmark(task, runs=2, warmup=0, progress=False)


def test_tegrastats_sampler_runs_during_the_timed_calls():
    from tinymm.bench import TegrastatsSampler

    line = "RAM 2147/7620MB GR3D_FREQ 50% cpu@47.5C tj@48.5C VDD_IN 4556mW/4556mW VDD_SOC 1451mW/1451mW"
    fake = [sys.executable, "-c", f"import time\nprint({line!r}, flush=True)\ntime.sleep(60)"]
    sampler = TegrastatsSampler(command=fake)

    def task():  # waits until the sampler has seen a line, so the check does not race its start
        deadline = time.monotonic() + 20.0
        while not sampler.samples and time.monotonic() < deadline:
            time.sleep(0.01)

    report = run_benchmark(task, runs=2, warmup=0, progress=False, sampler=sampler)
    assert report.power is not None and report.power.samples == 1
    assert report.power.total_rail == "VDD_IN" and report.power.total_power_mean_w == pytest.approx(4.556)
    assert "power (tegrastats): VDD_IN mean 4.56 W" in render_markdown(report)


# ---- progress --------------------------------------------------------------------------------


def test_progress_is_silent_when_not_a_tty():
    stream = io.StringIO()
    run_benchmark(lambda: None, runs=5, warmup=2, progress=True, stream=stream)
    assert stream.getvalue() == ""


def test_progress_draws_on_a_tty_unless_disabled():
    stream = TtyBuffer()
    run_benchmark(lambda: None, runs=5, warmup=2, progress=True, stream=stream, task="caption")
    out = stream.getvalue()
    assert "\r" in out and "caption" in out and "5/5" in out and out.endswith("\n")
    quiet = TtyBuffer()
    run_benchmark(lambda: None, runs=5, warmup=2, progress=False, stream=quiet)
    assert quiet.getvalue() == ""
    assert not ProgressLine("x", enabled=True, stream=io.StringIO()).enabled


# ---- cold start ------------------------------------------------------------------------------


def test_cold_start_times_the_first_line_and_the_exit():
    script = "import time; time.sleep(0.2); print('result', flush=False); time.sleep(0.3)"
    cold = measure_cold_start([sys.executable, "-c", script], repeats=2)
    assert len(cold.first_result_s) == 2 and cold.first_line == "result"
    for first, end in zip(cold.first_result_s, cold.exit_s):
        assert first >= 0.2 and end >= first + 0.3 * 0.9
    assert cold.to_dict()["command"][0] == sys.executable


def test_cold_start_failures_are_clear():
    with pytest.raises(ColdStartError, match="exited with 3.*boom"):
        measure_cold_start([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    with pytest.raises(ColdStartError, match="ran past"):
        measure_cold_start([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    with pytest.raises(ValueError):
        measure_cold_start([sys.executable, "-c", "print(1)"], repeats=0)


# ---- reports ---------------------------------------------------------------------------------


def _report():
    clock = FakeClock()

    def task():
        clock.advance(0.010)
        return FakeCaption("x", (1, 2), FakeTimings(2.0, 5.0, 1.0, (1.0,), 0.5))

    report = run_benchmark(task, runs=4, warmup=1, progress=False, clock=clock, task="caption")
    return report.with_context(machine=collect_machine_facts(1, run=lambda argv: None),
                               command="tinymm bench b --task caption", settings={"bundle": "b", "provider": "cpu"})


def test_json_report_contents(tmp_path):
    report = _report()
    path = write_json(report, tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(report_to_dict(report)))
    assert data["ok"] is True and data["task"] == "caption"
    assert data["command"] == "tinymm bench b --task caption"
    assert data["settings"] == {"bundle": "b", "provider": "cpu"}
    assert (data["runs"], data["warmup"], data["batch"]) == (4, 1, 1)
    assert data["latency_ms"]["p50_ms"] == pytest.approx(10.0)
    assert list(data["stages_ms"]) == ["preprocess", "encode", "prefill", "decode", "postprocess", "overhead"]
    assert data["stages_ms"]["overhead"]["mean_ms"] == pytest.approx(0.5)
    assert data["stage_check"]["ok"] is True
    assert data["throughput_items_per_s"] == pytest.approx(100.0)
    assert data["tokens"] == 8
    assert data["machine"]["cpu_model"] and "cpu_flags" in data["machine"]
    assert set(data["memory"]) == {"start", "end"}


def test_markdown_report_contents():
    text = render_markdown(_report())
    assert text.startswith("## tinymm bench: caption (bundle b, provider cpu)")
    assert "| stage | mean ms | p50 ms | p90 ms | p99 ms | std ms | share |" in text
    assert "| encode | 5.000 | 5.000 |" in text
    assert "| overhead | 0.500 |" in text
    assert "| **end-to-end** | 10.000 | 10.000 |" in text
    assert "throughput: 100.00 items/s" in text
    assert "Machine: " in text and "Command: `tinymm bench b --task caption`" in text


# ---- tinymm bench ----------------------------------------------------------------------------


class FakePipeline:
    """Stands in for what tinymm.load returns; records how each task was called."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _result(self, n: int = 1):
        timings = FakeTimings(0.1, 0.2, 0.1, (0.05,), 0.01, batch_size=n)
        one = FakeCaption("a red circle", (1, 2), timings)
        return one if n == 1 else [one] * n

    def caption(self, images):
        self.calls.append(("caption", type(images).__name__, len(images) if isinstance(images, list) else 1))
        return self._result(len(images) if isinstance(images, list) else 1)

    def ask(self, image, question):
        self.calls.append(("ask", question))
        return self._result()

    def classify(self, image, labels):
        self.calls.append(("classify", tuple(labels)))
        return self._result()

    def transcribe(self, audio, sample_rate):
        self.calls.append(("transcribe", audio.dtype.name, audio.shape, sample_rate))
        return self._result()


@pytest.fixture
def fake_load(monkeypatch):
    pipeline = FakePipeline()
    loads = []

    def load(bundle, **kwargs):
        loads.append((bundle, kwargs))
        return pipeline

    monkeypatch.setattr(tinymm, "load", load, raising=False)
    return pipeline, loads


BASE = ["bench", "my-bundle", "--runs", "3", "--warmup", "1", "--no-tegrastats"]


def test_bench_command_json(fake_load, capsys, tmp_path):
    pipeline, loads = fake_load
    md = tmp_path / "bench.md"
    code = main([*BASE, "--task", "caption", "--threads", "2", "--json", "--output", str(tmp_path / "b.json"),
                 "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["task"] == "caption" and data["runs"] == 3
    assert data["settings"]["threads"] == 2 and data["settings"]["input"] == "synthetic"
    assert set(data["memory"]) == {"before_load", "after_load", "start", "end"}
    assert loads == [("my-bundle", {"backend": "onnxruntime", "provider": "auto", "precision": "auto", "threads": 2,
                                    "family": "vision-language"})]
    assert len(pipeline.calls) == 4  # 1 warmup + 3 timed
    assert json.loads((tmp_path / "b.json").read_text())["task"] == "caption"
    assert "| **end-to-end** |" in md.read_text()


@pytest.mark.parametrize("task, args, expected", [
    ("ask", ["--question", "how many shapes?"], ("ask", "how many shapes?")),
    ("classify", ["--labels", "cat, dog"], ("classify", ("cat", "dog"))),
    ("transcribe", [], ("transcribe", "float32", (32000,), 16000)),
    ("caption", ["--batch", "3"], ("caption", "list", 3)),
])
def test_bench_command_calls_each_task(fake_load, capsys, task, args, expected):
    pipeline, _ = fake_load
    assert main([*BASE, "--task", task, *args]) == 0
    assert pipeline.calls[-1] == expected
    assert f"## tinymm bench: {task}" in capsys.readouterr().out


def test_bench_command_cold_start_with_a_given_command(fake_load, capsys):
    command = f"{sys.executable} -c \"print('first result')\""
    assert main([*BASE, "--task", "caption", "--cold-start", "--cold-start-command", command, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cold_start"]["first_line"] == "first result"
    assert data["cold_start"]["median_first_result_s"] > 0


def test_bench_command_reads_an_input_file(fake_load, capsys, tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 127, np.uint8))
    assert main([*BASE, "--task", "caption", "--input", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["input"] == str(path)


def test_bench_command_bad_inputs(fake_load, capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main([*BASE, "--task", "caption", "--input", str(bad)]) == EXIT_BAD_INPUT
    assert main([*BASE, "--task", "classify", "--labels", " , "]) == EXIT_BAD_INPUT
    assert main([*BASE, "--task", "caption", "--runs", "0"]) == EXIT_USAGE
    assert main([*BASE, "--task", "translate"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--labels" in err and "--runs" in err


# ---- end to end on a real tiny bundle (export tier) ------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm_bundle(tmp_path_factory):
    """A random-weight tiny vision-language bundle, exported the way python -m export makes one."""
    torch = pytest.importorskip("torch", reason="exporting a bundle needs torch (pip install 'tinymm[train]')")
    pytest.importorskip("onnx", reason="exporting a bundle needs onnx (pip install 'tinymm[train]')")
    from export.__main__ import main as export_main
    from train.checkpoint import save_checkpoint
    from train.data.scene_dataset import generate_example
    from train.data.scene_language import all_labels
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig
    from train.models import VisionLanguageModel, VLMConfig
    from train.vlm_tokenizer import scene_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("bench-bundle")
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(12)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=24)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny())
    save_checkpoint(root / "vlm" / "final", model, model.config, step=1)
    try:
        code = export_main([str(root / "vlm" / "final"), "--out", str(root / "bundle"), "--precision", "fp32",
                            "--threads", "1", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root / "bundle"


@pytest.mark.requires_torch
@pytest.mark.slow
def test_bench_command_on_a_real_tiny_bundle(tiny_vlm_bundle, capsys):
    code = main(["bench", str(tiny_vlm_bundle), "--task", "caption", "--runs", "4", "--warmup", "1",
                 "--threads", "1", "--no-tegrastats", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {"preprocess", "encode", "prefill", "overhead"} <= set(data["stages_ms"])
    assert data["latency_ms"]["count"] == 4 and data["latency_ms"]["p50_ms"] > 0
    # The pipeline times its stages inside the call, so they can never add up to more than it.
    assert data["stage_check"]["runs_over_total"] == 0
    assert data["settings"]["precision"] == "auto" and data["machine"]["libraries"]["onnxruntime"]
