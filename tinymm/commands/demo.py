"""``tinymm demo``: run every task on the sample inputs that ship with tinymm, with latencies.

Loads the default bundles (``scene-vlm`` and ``speech-commands`` from tinymm/assets/bundles, or
``--vision-bundle`` / ``--speech-bundle``) and the samples (tinymm/assets/samples, or
``--samples DIR``: images, spoken commands and spoken questions, with their ground truth in
``samples.json``, written by scripts/make_samples.py), then runs, one sample at a time:

- caption: each image; correct when the objects, counts and sign texts it names are all in the
  scene (positions and relations are not checked) and it names at least one
  (``tinymm.robot.demo_checks``);
- ask: each image's questions from the manifest; correct when the answer is the expected word;
- classify: each image against the manifest's label set; correct when the top label is one of
  the image's objects;
- transcribe: each clip; correct when the transcript is the expected one (normalized);
- command: each spoken command; correct when the parsed intent is the expected one;
- spoken question: each spoken question with its image; correct when the answer is expected.

Each pipeline runs once untimed first (a caption, a classification that embeds the label set,
a transcript), so the latencies are steady-state; that warm-up time is reported on its own.
Prints a line per sample (the result, the expected answer, a check mark or a cross, the
latency and its stages) and a summary; ``--json`` prints one JSON document: ``{"ok": true,
"samples": ..., "bundles": {"vision"|"speech": {"name", "root", "models", "load_ms"}},
"warmup_ms": ..., "tasks": {task: [{"input", "prompt", "got", "expected", "correct",
"latency_ms", "timings", "result"}]}, "summary": {"tasks": {task: {"correct", "total"}},
"correct", "wrong", "total", "load_ms", "run_ms"}}``.

Exit codes: 0 when every task ran, whether or not the answers were right (the summary counts
the wrong ones); 4 a missing or bad bundle (a missing default bundle says how to build it);
3 missing or malformed samples; 5 a backend error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
SAMPLES_MANIFEST = "samples.json"
SAMPLES_FORMAT = "tinymm-samples"
SAMPLES_FORMAT_VERSION = 1  # the newest samples.json format this command reads
MAKE_BUNDLES = "python scripts/make_default_bundles.py VLM_CHECKPOINT SPEECH_CHECKPOINT"
MAKE_SAMPLES = "python scripts/make_samples.py"
TASKS = ("caption", "ask", "classify", "transcribe", "command", "spoken_question")
TASK_TITLES = {"spoken_question": "spoken question"}
MS_PER_S = 1000.0
MARKS = {True: ("\u2713", "ok"), False: ("\u2717", "x")}  # (unicode mark, ASCII fallback)
INDENT = "  "


@dataclass(frozen=True)
class Check:
    """One task run on one sample, and whether its result is the expected one."""

    task: str  # one of TASKS
    input: str  # sample file(s), relative to the samples directory
    prompt: str | None  # the question asked, or None
    got: str  # the result, as one line of text
    expected: str  # the manifest's answer, as one line of text
    correct: bool
    latency_ms: float  # wall time of the pipeline call
    timings: Mapping[str, Any]  # the result's stage timings (to_dict form)
    result: Mapping[str, Any] = field(default_factory=dict)  # the result's to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "prompt": self.prompt, "got": self.got, "expected": self.expected,
                "correct": self.correct, "latency_ms": round(self.latency_ms, 3), "timings": dict(self.timings),
                "result": dict(self.result)}


# ---- samples -----------------------------------------------------------------------------------


def _samples_error(directory: Path, why: str) -> Exception:
    from tinymm.errors import InputError

    return InputError(
        f"the sample inputs in {directory} cannot be used: {why}. Reinstall tinymm (the samples ship with it), "
        f"write them again with {MAKE_SAMPLES} from a source checkout, or pass --samples DIR"
    )


def read_samples(directory: Path) -> dict[str, Any]:
    """The checked samples manifest of ``directory``; InputError naming what is missing or wrong."""
    path = directory / SAMPLES_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _samples_error(directory, f"there is no {SAMPLES_MANIFEST}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _samples_error(directory, f"{SAMPLES_MANIFEST} is unreadable ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != SAMPLES_FORMAT:
        raise _samples_error(directory, f"{SAMPLES_MANIFEST} is not a {SAMPLES_FORMAT!r} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= SAMPLES_FORMAT_VERSION:
        raise _samples_error(directory, f"format_version {version!r} is not one this tinymm reads "
                                        f"(1..{SAMPLES_FORMAT_VERSION}); upgrade tinymm")
    required = {"images": ("id", "file", "objects", "captions", "qa", "labels"),
                "clips": ("id", "file", "kind", "transcript", "intent")}
    for section, keys in required.items():
        entries = manifest.get(section)
        if not isinstance(entries, list) or not entries:
            raise _samples_error(directory, f"{SAMPLES_MANIFEST} has no {section!r} list")
        for entry in entries:
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise _samples_error(directory, f"a {section} entry lacks {missing}: {entry!s:.80}")
            relative = entry["file"]
            if (not isinstance(relative, str) or ".." in Path(relative).parts or Path(relative).is_absolute()
                    or not (directory / relative).is_file()):
                raise _samples_error(directory, f"{relative!r} is not a file inside the samples directory")
    if not isinstance(manifest.get("labels"), list) or not manifest["labels"]:
        raise _samples_error(directory, f"{SAMPLES_MANIFEST} has no 'labels' list (the classify label set)")
    images = {image["id"] for image in manifest["images"]}
    for clip in manifest["clips"]:
        if clip["kind"] == "question" and (clip.get("image") not in images or "answer" not in clip):
            raise _samples_error(directory, f"spoken question {clip['id']!r} needs an 'answer' and an 'image' "
                                            f"among {sorted(images)}")
    return manifest


# ---- checks ------------------------------------------------------------------------------------


def _same_words(a: str, b: str) -> bool:
    return a.strip().lower().rstrip("?.!") == b.strip().lower().rstrip("?.!")


# ---- running -----------------------------------------------------------------------------------


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(call(*args), its wall time in ms)."""
    start = time.perf_counter()
    result = call(*args)
    return result, (time.perf_counter() - start) * MS_PER_S


def _intent_text(intent: Mapping[str, Any] | None) -> str:
    return "none" if intent is None else json.dumps(intent, ensure_ascii=False)


def run_tasks(vision: Any, speech: Any, samples: Mapping[str, Any], root: Path) -> dict[str, list[Check]]:
    """Every task on every sample it applies to, one call per sample: task -> checks."""
    from tinymm.pipelines.spoken_question import SpokenQuestionPipeline
    from tinymm.robot.demo_checks import caption_holds
    from tinymm.robot.transcripts import normalize_transcript

    images = {image["id"]: image for image in samples["images"]}
    labels = samples["labels"]
    checks: dict[str, list[Check]] = {task: [] for task in TASKS}
    for image in samples["images"]:
        path, name = str(root / image["file"]), image["file"]
        caption, ms = _timed(vision.caption, path)
        checks["caption"].append(Check("caption", name, None, caption.text, image["captions"][0],
                                       caption_holds(caption.text, image["objects"]), ms,
                                       caption.timings.to_dict(), caption.to_dict()))
        for qa in image["qa"]:
            answer, ms = _timed(vision.ask, path, qa["question"])
            checks["ask"].append(Check("ask", name, qa["question"], answer.answer, qa["answer"],
                                       _same_words(answer.answer, qa["answer"]), ms, answer.timings.to_dict(),
                                       answer.to_dict()))
        ranked, ms = _timed(vision.classify, path, labels)
        got = f"{ranked.label} ({ranked.probabilities[0]:.0%})"
        expected = image["labels"][0] if len(image["labels"]) == 1 else "one of: " + "; ".join(image["labels"])
        checks["classify"].append(Check("classify", name, None, got, expected,
                                        ranked.label in image["labels"], ms, ranked.timings.to_dict(),
                                        ranked.to_dict()))
    spoken = SpokenQuestionPipeline(vision, speech)
    for clip in samples["clips"]:
        path, name = str(root / clip["file"]), clip["file"]
        transcript, ms = _timed(speech.transcribe, path)
        checks["transcribe"].append(Check("transcribe", name, None, transcript.text, clip["transcript"],
                                          normalize_transcript(transcript.text) == clip["transcript"], ms,
                                          transcript.timings.to_dict(), transcript.to_dict()))
        if clip["kind"] == "command":
            heard, ms = _timed(speech.command, path)
            intent = None if heard.intent is None else heard.intent.to_dict()
            checks["command"].append(Check("command", name, None, f"{heard.text} -> {_intent_text(intent)}",
                                           _intent_text(clip["intent"]), intent == clip["intent"], ms,
                                           heard.transcript.timings.to_dict(), heard.to_dict()))
        elif clip["kind"] == "question":
            image = images[clip["image"]]
            answer, ms = _timed(spoken.ask, str(root / image["file"]), path)
            understood = answer.question if answer.answer is not None else "not a question about the scene"
            got = f"heard {answer.command.text!r} -> {understood}" + (
                f" -> {answer.answer.answer}" if answer.answer is not None else "")
            correct = answer.answer is not None and _same_words(answer.answer.answer, clip["answer"])
            result = answer.to_dict()
            checks["spoken_question"].append(Check(
                "spoken_question", f"{name} + {image['file']}", None, got,
                f"{clip.get('question', clip['transcript'])} -> {clip['answer']}", correct, ms,
                result["timings"], result))
    return checks


def _warm_up(vision: Any, speech: Any, samples: Mapping[str, Any], root: Path) -> float:
    """Run each model once, untimed by the checks (and embed the label set); returns the wall ms."""
    start = time.perf_counter()
    image = str(root / samples["images"][0]["file"])
    vision.caption(image)
    vision.classify(image, samples["labels"])
    speech.transcribe(str(root / samples["clips"][0]["file"]))
    return (time.perf_counter() - start) * MS_PER_S


# ---- loading -----------------------------------------------------------------------------------


def _load(name_or_path: str, flag: str, family: str, options: Any) -> tuple[Any, float]:
    """(pipeline, load ms); a missing default bundle says how to build it."""
    from tinymm.bundle.errors import BundleNotFoundError
    from tinymm.bundle.names import DEFAULT_BUNDLES_DIR, DEFAULT_SPEECH_BUNDLE, DEFAULT_VISION_BUNDLE, resolve_bundle
    from tinymm.pipelines.loading import load_with

    default = DEFAULT_VISION_BUNDLE if family == "vision-language" else DEFAULT_SPEECH_BUNDLE
    if name_or_path == default:
        try:
            resolve_bundle(default)
        except BundleNotFoundError as e:
            raise BundleNotFoundError(
                f"the default {family} bundle {default!r} is not installed (looked in {DEFAULT_BUNDLES_DIR}); "
                f"build the default bundles in a source checkout with {MAKE_BUNDLES} and reinstall, "
                f"or pass {flag} PATH to a bundle"
            ) from e
    return _timed(lambda: load_with(name_or_path, options, family=family))


def _models(pipeline: Any) -> dict[str, str]:
    """Component -> "<precision> on <provider>" for each model the pipeline loaded."""
    bundle = pipeline.bundle
    sessions = {"speech_encoder": getattr(pipeline, "encoder", None)}
    out = {}
    for name, component in bundle.manifest.components.items():
        session = sessions.get(name) or getattr(pipeline, name, None)
        if session is None:
            continue
        path = getattr(session, "model_path", None)
        precision = next((p for p in component.precisions
                          if path is not None and Path(path) == bundle.component_path(name, p)), "?")
        out[name] = f"{precision} on {session.provider}"
    return out


# ---- output ------------------------------------------------------------------------------------


def _mark(correct: bool) -> str:
    unicode_mark, ascii_mark = MARKS[correct]
    try:
        unicode_mark.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ascii_mark
    return unicode_mark


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _stages(timings: Mapping[str, Any]) -> str:
    """"preprocess 0.4, encode 3.1, prefill 1.2, decode 7.0 for 6 tokens, postprocess 0.1" (ms)."""
    if "speech" in timings:  # a spoken question: one pipeline after the other
        vision = timings.get("vision")
        return f"speech {timings['speech']['total_ms']:.1f}, vision " + (f"{vision['total_ms']:.1f}" if vision else "-")
    parts = [f"preprocess {timings['preprocess_ms']:.1f}", f"encode {timings['encode_ms']:.1f}"]
    if timings.get("decode_steps") or timings.get("prefill_ms"):
        parts += [f"prefill {timings['prefill_ms']:.1f}",
                  f"decode {timings['decode_ms']:.1f} for {_plural(timings['decode_steps'], 'token')}"]
    parts.append(f"postprocess {timings['postprocess_ms']:.1f}")
    return ", ".join(parts)


def render_text(report: Mapping[str, Any], checks: Mapping[str, Sequence[Check]]) -> str:
    """The human-readable report: bundles, two lines per sample and task, the summary."""
    lines = [f"tinymm demo: samples in {report['samples']}"]
    for role, info in report["bundles"].items():
        models = ", ".join(f"{name} {how}" for name, how in info["models"].items())
        lines.append(f"{role}: {info['name']} ({models}), loaded in {info['load_ms']:.0f} ms")
    lines.append(f"warm-up (first runs, label set embedding): {report['warmup_ms']:.0f} ms; latencies below in ms")
    for task in TASKS:
        lines += ["", TASK_TITLES.get(task, task)]
        for c in checks[task]:
            prompt = f" {c.prompt} ->" if c.prompt else ""
            lines.append(f"{INDENT}{_mark(c.correct)} {c.input}:{prompt} {c.got}")
            lines.append(f"{INDENT * 2}  expected: {c.expected} | {c.latency_ms:.1f} ({_stages(c.timings)})")
    summary = report["summary"]
    counts = ", ".join(f"{TASK_TITLES.get(t, t)} {s['correct']}/{s['total']}" for t, s in summary["tasks"].items())
    lines += ["", f"correct: {counts}; {summary['wrong']} of {summary['total']} wrong",
              f"load {summary['load_ms']:.0f} ms, tasks {summary['run_ms']:.0f} ms"]
    return "\n".join(lines) + "\n"


# ---- the subcommand ----------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_SPEECH_BUNDLE, DEFAULT_VISION_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser(
        "demo", help="run every task on the bundled sample inputs",
        description="Caption, ask, classify, transcribe, command and spoken questions on the sample images and "
        "clips that ship with tinymm, with the expected answers and latencies. Exits 0 when it ran, "
        "even if some answers are wrong.",
    )
    parser.add_argument("--samples", type=Path, default=SAMPLES_DIR, metavar="DIR",
                        help="directory holding samples.json (default: the samples shipped with tinymm)")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE, bundle_flag="--vision-bundle")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE, bundle_flag="--speech-bundle")
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.pipelines.load_options import LoadOptions

    samples = read_samples(args.samples)
    options = LoadOptions.from_args(args)
    vision, vision_ms = _load(args.vision_bundle, "--vision-bundle", "vision-language", options)
    speech, speech_ms = _load(args.speech_bundle, "--speech-bundle", "speech", options)
    warmup_ms = _warm_up(vision, speech, samples, args.samples)
    checks, run_ms = _timed(run_tasks, vision, speech, samples, args.samples)
    tasks = {task: {"correct": sum(c.correct for c in checks[task]), "total": len(checks[task])} for task in TASKS}
    total = sum(s["total"] for s in tasks.values())
    correct = sum(s["correct"] for s in tasks.values())
    report = {
        "ok": True,
        "samples": str(args.samples),
        "bundles": {
            role: {"name": pipeline.name, "root": str(pipeline.bundle.root), "models": _models(pipeline),
                   "load_ms": round(ms, 3)}
            for role, pipeline, ms in (("vision", vision, vision_ms), ("speech", speech, speech_ms))
        },
        "warmup_ms": round(warmup_ms, 3),
        "summary": {"tasks": tasks, "correct": correct, "wrong": total - correct, "total": total,
                    "load_ms": round(vision_ms + speech_ms, 3), "run_ms": round(run_ms, 3)},
    }
    if args.json:
        report["tasks"] = {task: [c.to_dict() for c in checks[task]] for task in TASKS}
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_text(report, checks))
    return 0
