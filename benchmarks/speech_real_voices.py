"""The speech-command model on voices it never trained on: flite and festival, against Whisper base.

    apt-get update && apt-get install -y flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
    python benchmarks/speech_real_voices.py [--clips 128] [--seed 0] [--bundle NAME=PATH_OR_BUNDLE_NAME ...]
        [--whisper PATH | --no-whisper] [--threads 2] [--warmup 2] [--clips-dir runs/speech-real-voices]
        [--out benchmarks/results] [--json]

flite and festival are reserved for evaluation: the project never trains or tunes on them, so these
clips measure voices the models have never heard.

1. ``--clips`` sentences of the command grammar (``sample_utterance``, seeded by ``--seed``), every other
   one by flite (``flite -voice V -t TEXT -o WAV``) and festival (``text2wave -eval "(voice_V)"``), each
   engine's voices taking turns; made 16 kHz mono and cached in ``--clips-dir`` with a clips.json (file,
   transcript, intent, engine, voice). A plan is the prefix of a longer one: reruns reuse the clips.
2. Each speech bundle (``--bundle``, repeatable; default ``speech-commands``) and Whisper base
   (``--whisper``; default: the user's ``whisper-base``, else the one tests/test_whisper_base_real.py
   builds in ~/.cache/tinymm-tests; scripts/make_whisper_bundle.py makes one) is loaded with
   ``tinymm.load(bundle, threads=--threads)`` at its default precision and runs ``command(samples,
   16000)`` per clip as shipped: VAD, grammar, reject threshold; Whisper detects the language.
3. Per engine, on the flite clips, the festival clips and all: WER and intent accuracy of the transcript
   (``train.metrics_speech.score_transcripts``, which normalizes Whisper's "Go ahead, 3 meters." to "go
   ahead three meters"), and the intent ``command`` delivered: right, wrong (a wrong action) or none.
4. Latency: wall time of each call; per clip every engine runs once, the first one rotated clip by clip;
   the first ``--warmup`` clips are scored, not timed. p50 / p90, and each bundle's p50 over Whisper's
   on the same clips (target: at most 1/50).
5. Writes ``--out``/speech_real_voices.json and .md: command, machine, date, tables, example errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: train/ lives in the checkout
    sys.path.insert(0, str(ROOT))

from tinymm.bench import summarize  # noqa: E402
from tinymm.robot.intent import Intent, IntentParser  # noqa: E402
from train.data.speech_grammar import GrammarConfig, sample_utterance  # noqa: E402
from train.metrics_speech import score_transcripts  # noqa: E402

logger = logging.getLogger("speech_real_voices")

RATE_HZ = 16000
APT_INSTALL = "apt-get install -y flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
# The reserved engines and their English voices (flite -lv; festival's voice_<name> functions).
VOICES = {
    "flite": ("kal", "kal16", "awb", "rms", "slt"),  # kal is an 8 kHz voice, upsampled here
    "festival": ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"),
}
TTS_ENGINES = tuple(VOICES)
GROUPS = (*TTS_ENGINES, "all")
SYNTH_TIMEOUT_S = 60
TARGET_RATIO = 1 / 50  # a speech bundle's p50 over Whisper's p50, at most
WHISPER = "whisper-base"
TEST_CACHE = Path(os.environ.get("TINYMM_TEST_CACHE") or "~/.cache/tinymm-tests").expanduser()
EXAMPLES_PER_ENGINE = 4


# ---- clips -------------------------------------------------------------------------------------


def plan_clips(count: int, seed: int, voices: Mapping[str, Sequence[str]] = VOICES) -> list[dict[str, Any]]:
    """``count`` clips of the grammar: engines alternate clip by clip, each engine's voices take turns."""
    rng, grammar, engines = np.random.default_rng(seed), GrammarConfig(), list(voices)
    plan = []
    for i in range(count):
        utterance = sample_utterance(rng, grammar)
        engine = engines[i % len(engines)]
        voice = voices[engine][(i // len(engines)) % len(voices[engine])]
        plan.append({"file": f"{i:04d}-{engine}-{voice}.wav", "transcript": utterance.transcript,
                     "spoken_text": utterance.spoken_text, "intent": utterance.intent.to_dict(),
                     "kind": utterance.kind, "engine": engine, "voice": voice})
    return plan


def synthesis_argv(engine: str, voice: str, text: str, wav: Path) -> tuple[list[str], str | None]:
    """The command that speaks ``text`` into ``wav``, and what it reads on stdin."""
    if engine == "flite":
        return ["flite", "-voice", voice, "-t", text, "-o", str(wav)], None
    if engine == "festival":
        return ["text2wave", "-eval", f"(voice_{voice})", "-o", str(wav)], text
    raise ValueError(f"unknown TTS engine {engine!r}; choose from {list(TTS_ENGINES)}")


def check_flite_voices(voices: set[str]) -> None:
    """flite speaks an unknown voice as its default one, silently: refuse voices ``flite -lv`` does not list."""
    if not voices:
        return
    try:
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=10).stdout.split()
    except FileNotFoundError as e:
        raise SystemExit(f"flite is not installed; run: apt-get update && {APT_INSTALL}") from e
    if voices - set(listed):
        raise SystemExit(f"flite has no voice {sorted(voices - set(listed))} (flite -lv: {' '.join(listed[2:])})")


def synthesize(engine: str, voice: str, text: str) -> np.ndarray:
    """(samples,) float32 at RATE_HZ, mono: ``text`` spoken by ``voice`` of ``engine``."""
    from tinymm.preprocess.audio_io import load_audio, resample, to_mono

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        argv, stdin = synthesis_argv(engine, voice, text, wav)
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
        except FileNotFoundError as e:
            raise SystemExit(f"{argv[0]} is not installed; run: apt-get update && {APT_INSTALL}") from e
        if done.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"{engine} voice {voice!r} failed on {text!r} (exit {done.returncode}): "
                               f"{done.stderr.strip()[-500:]}; is the voice installed? ({APT_INSTALL})")
        samples, rate = load_audio(wav)
    return resample(to_mono(samples), rate, RATE_HZ)


def prepare_clips(plan: list[dict[str, Any]], clips_dir: Path) -> list[dict[str, Any]]:
    """The planned clips with their ``audio``, synthesized or read back from ``clips_dir``."""
    from tinymm.commands.bench import write_wav
    from tinymm.preprocess.audio_io import load_audio, resample, to_mono

    index = clips_dir / "clips.json"
    cached = {e["file"]: e for e in json.loads(index.read_text())["clips"]} if index.is_file() else {}
    reuse = {e["file"] for e in plan if (clips_dir / e["file"]).is_file()
             and all(cached.get(e["file"], {}).get(k) == e[k] for k in ("spoken_text", "engine", "voice"))}
    check_flite_voices({e["voice"] for e in plan if e["engine"] == "flite" and e["file"] not in reuse})
    clips_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for entry in tqdm(plan, desc="clips", unit="clip"):
        path = clips_dir / entry["file"]
        if entry["file"] not in reuse:
            write_wav(path, synthesize(entry["engine"], entry["voice"], entry["spoken_text"]), RATE_HZ)
        samples, rate = load_audio(path)  # read back: a first run scores the same 16-bit samples as a rerun
        audio = resample(to_mono(samples), rate, RATE_HZ)
        cached[entry["file"]] = {**entry, "seconds": round(len(audio) / RATE_HZ, 3)}
        clips.append({**cached[entry["file"]], "audio": audio})
    index.write_text(json.dumps({"clips": [cached[k] for k in sorted(cached)]}, indent=1) + "\n")
    return clips


def tts_version(engine: str) -> str | None:
    """The last line of ``flite --version`` / ``festival --version``; None when it does not run."""
    try:
        out = subprocess.run([engine, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[-1].strip().removeprefix("version: ") if out else None


# ---- engines -----------------------------------------------------------------------------------


def default_whisper() -> str:
    """The user's whisper-base bundle, else the one tests/test_whisper_base_real.py builds."""
    from tinymm.bundle.errors import BundleNotFoundError
    from tinymm.bundle.names import resolve_bundle

    try:
        return str(resolve_bundle(WHISPER))
    except BundleNotFoundError:
        built = sorted(p for p in TEST_CACHE.glob(f"{WHISPER}-*") if (p / "manifest.json").is_file())
        if built:
            return str(built[-1])
    raise SystemExit(f"no {WHISPER} bundle (not in the bundle directories nor in {TEST_CACHE}); build one with "
                     "pip install torch==2.13.0 '.[train,hf,whisper-weights]' && "
                     "python scripts/make_whisper_bundle.py, pass --whisper PATH, or --no-whisper")


def loaded_precisions(pipeline: Any) -> dict[str, str]:
    """Component -> the precision ``tinymm.load`` picked for it (precision "auto")."""
    from tinymm.backends.base import get_backend
    from tinymm.pipelines.sessions import choose_precision, resolved_provider

    provider = resolved_provider(get_backend("onnxruntime"), "auto")
    return {name: choose_precision(component.precisions, "auto", provider)
            for name, component in pipeline.bundle.manifest.components.items()}


def load_engines(bundles: Sequence[tuple[str, str]], whisper: str | None, threads: int) -> dict[str, dict[str, Any]]:
    """name -> {"pipeline", "bundle", "precision", "vad", "reject_threshold"}: the speech bundles, then Whisper."""
    import tinymm

    sources = [*bundles, *([(WHISPER, whisper)] if whisper else [])]
    if len(dict(sources)) < len(sources):
        raise SystemExit(f"engine names must differ (Whisper is {WHISPER!r}); got {sources}: rename one, NAME=PATH")
    engines = {}
    for name, source in sources:
        pipeline = tinymm.load(source, threads=threads, family="speech")
        engines[name] = {"pipeline": pipeline, "bundle": str(source), "precision": loaded_precisions(pipeline),
                         "vad": None if pipeline.vad is None else pipeline.vad.name,
                         "reject_threshold": getattr(pipeline, "reject_threshold", None)}
    return engines


def run_clips(engines: Mapping[str, Mapping[str, Any]], clips: list[dict[str, Any]],
              warmup: int) -> list[dict[str, Any]]:
    """One row per engine and clip; per clip the engines run in turn, the first one rotated clip by clip."""
    names, rows = list(engines), []
    for i, clip in enumerate(tqdm(clips, desc="engines", unit="clip")):
        for name in names[i % len(names):] + names[:i % len(names)]:
            pipeline = engines[name]["pipeline"]
            start = time.perf_counter()
            result = pipeline.command(clip["audio"], RATE_HZ)
            seconds = time.perf_counter() - start
            vad, pipeline.vad = pipeline.vad, None  # the recognizer alone: both pipelines share the same VAD
            start = time.perf_counter()
            pipeline.command(clip["audio"], RATE_HZ)
            alone = time.perf_counter() - start
            pipeline.vad = vad
            rows.append({"engine": name, "clip": i, "tts": clip["engine"], "voice": clip["voice"],
                         "reference": clip["transcript"], "expected": clip["intent"], "hypothesis": result.text,
                         "intent": None if result.intent is None else result.intent.to_dict(),
                         "rejected": result.rejected, "reason": result.reject_reason,
                         "language": result.transcript.language, "seconds": seconds, "seconds_no_vad": alone,
                         "timed": i >= warmup})
    return rows


# ---- scores ------------------------------------------------------------------------------------


def acted_right(row: Mapping[str, Any]) -> bool:
    """True when ``command`` delivered the intent that was said."""
    return row["intent"] is not None and Intent.from_dict(row["intent"]) == Intent.from_dict(row["expected"])


def score_rows(rows: Sequence[Mapping[str, Any]], parser: IntentParser | None = None) -> dict[str, Any]:
    """WER and intent accuracy of the transcripts, the intents delivered, and latency of the timed rows."""
    scores = score_transcripts([r["reference"] for r in rows], [r["hypothesis"] for r in rows],
                               [r["expected"] for r in rows], parser or IntentParser())
    right = sum(acted_right(r) for r in rows)
    wrong = sum(r["intent"] is not None and not acted_right(r) for r in rows)
    timed = [r["seconds"] for r in rows if r["timed"]]
    latency = summarize(timed).to_dict() if timed else {}
    return {"clips": len(rows), "wer": scores.wer, "sentence_accuracy": scores.sentence_accuracy,
            "intent_accuracy": scores.intent_accuracy, "acted_right": right / len(rows) if rows else None,
            "wrong_actions": wrong, "rejected": sum(bool(r["rejected"]) for r in rows), "timed": len(timed),
            "p50_ms": latency.get("p50_ms"), "p90_ms": latency.get("p90_ms")}


def speed_ratio(bundle_rows: Sequence[Mapping[str, Any]], whisper_rows: Sequence[Mapping[str, Any]],
                key: str = "seconds") -> dict[str, Any]:
    """A bundle's p50 over Whisper's p50 on the clips both timed, and the median of the per-clip ratios;
    ``key`` "seconds" times the calls as shipped, "seconds_no_vad" the recognizers alone."""
    whisper_s = {r["clip"]: r[key] for r in whisper_rows if r["timed"]}
    pairs = [(r[key], whisper_s[r["clip"]]) for r in bundle_rows if r["timed"] and r["clip"] in whisper_s]
    if not pairs:
        return {"clips": 0, "p50_ratio": None, "paired_ratio": None, "target_met": None}
    mine, theirs = zip(*pairs)
    ratio = summarize(mine).p50_s / summarize(theirs).p50_s
    return {"clips": len(pairs), "p50_ratio": ratio, "paired_ratio": summarize([a / b for a, b in pairs]).p50_s,
            "target_met": ratio <= TARGET_RATIO}


def summarize_rows(rows: Sequence[Mapping[str, Any]], engines: Sequence[str], whisper: str | None) -> dict[str, Any]:
    """Scores per engine and group (flite, festival, all) and per voice; bundle/Whisper latency ratios."""
    parser = IntentParser()

    def pick(engine: str, group: str, voice: str | None = None) -> list[Mapping[str, Any]]:
        return [r for r in rows if r["engine"] == engine and group in ("all", r["tts"])
                and voice in (None, r["voice"])]

    voices = sorted({(r["tts"], r["voice"]) for r in rows}, key=lambda tv: (TTS_ENGINES.index(tv[0]), tv[1]))
    out: dict[str, Any] = {"scores": {}, "by_voice": {}, "ratios": {}, "ratios_no_vad": {}}
    for engine in engines:
        groups = [g for g in GROUPS if pick(engine, g)]
        out["scores"][engine] = {g: score_rows(pick(engine, g), parser) for g in groups}
        out["by_voice"][engine] = {f"{t}/{v}": score_rows(pick(engine, t, v), parser) for t, v in voices}
        if whisper is not None and engine != whisper:
            out["ratios"][engine] = {g: speed_ratio(pick(engine, g), pick(whisper, g)) for g in groups}
            out["ratios_no_vad"][engine] = {g: speed_ratio(pick(engine, g), pick(whisper, g), "seconds_no_vad")
                                            for g in groups}
    return out


def example_errors(rows: Sequence[Mapping[str, Any]], per_engine: int = EXAMPLES_PER_ENGINE) -> list[dict[str, Any]]:
    """Up to ``per_engine`` clips per engine whose intent was not delivered, one per voice first."""
    out = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        firsts, rest, voices = [], [], set()
        for r in (r for r in rows if r["engine"] == engine and not acted_right(r)):
            (rest if (r["tts"], r["voice"]) in voices else firsts).append(r)
            voices.add((r["tts"], r["voice"]))
        for r in (firsts + rest)[:per_engine]:
            outcome = (f"rejected: {r['reason']}" if r["rejected"] else
                       "no intent" if r["intent"] is None else f"wrong intent {json.dumps(r['intent'])}")
            out.append({k: r[k] for k in ("engine", "tts", "voice", "reference", "hypothesis", "language")}
                       | {"outcome": outcome})
    return out


# ---- report ------------------------------------------------------------------------------------


def _cells(s: Mapping[str, Any], latency: bool) -> str:
    """A score_rows dict as table cells: clips, WER, intent acc., acted right, wrong, rejected (p50, p90)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    cells = [s["clips"], pct(s["wer"]), pct(s["intent_accuracy"]), pct(s["acted_right"]), s["wrong_actions"],
             s["rejected"], *([f"{s[k]:.1f}" if s[k] is not None else "-" for k in ("p50_ms", "p90_ms")] * latency)]
    return " | ".join(str(c) for c in cells)


def render_markdown(doc: Mapping[str, Any]) -> str:
    tts = doc["tts"]
    lines = [
        "# The speech-command model on voices it never trained on (flite, festival)", "",
        f"Made by `{doc['command']}` on {doc['date']} ({doc['seconds']:.0f} s): {doc['machine_summary']}; "
        f"{doc['threads']} threads per engine.", "",
        "**flite and festival are reserved for evaluation: the project never trains or tunes on them.** "
        f"{doc['clips']} sentences of the command grammar (seed {doc['seed']}), alternately by "
        + "; ".join(f"{e} ({tts[e]['version'] or 'version unknown'}; voices {', '.join(tts[e]['voices'])}, "
                    f"{tts[e]['clips']} clips)" for e in TTS_ENGINES)
        + ", 16 kHz mono as the engines speak them (no padding, no gain). Every engine runs "
        "`command(samples, 16000)` as shipped (default precision, VAD, grammar and reject threshold; Whisper "
        "detects the language); a rejected clip counts with an empty transcript and no intent.", "",
        "Columns: WER against the canonical transcript; intent accuracy of the transcript (parsed by "
        "IntentParser, as train/metrics_speech.py); acted right = the intent `command` delivered is the one "
        "said; wrong actions = a delivered intent that is not; latency = wall time of the call, engines "
        f"interleaved with the first rotated per clip, the first {doc['warmup']} clips untimed; ratio = the "
        f"bundle's p50 over Whisper's p50 on the same clips (median of per-clip ratios in brackets; target "
        f"<= 1/{round(1 / TARGET_RATIO)}), as shipped and for the recognizers alone (the same call again with "
        "the VAD off, which both pipelines share).", "",
        "| engine | precision | TTS | clips | WER | intent acc. | acted right | wrong actions | rejected "
        "| p50 ms | p90 ms | p50 / Whisper p50 | recognizer alone: p50 / Whisper p50 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def ratio_cell(r: Mapping[str, Any] | None) -> str:
        if not r or r["p50_ratio"] is None:
            return "-"
        return (f"{r['p50_ratio']:.4f} = 1/{1 / r['p50_ratio']:.0f} ({r['paired_ratio']:.4f}): "
                + ("met" if r["target_met"] else "**missed**"))

    for engine, groups in doc["scores"].items():
        info = doc["engines"][engine]
        precision = sorted(set(info["precision"].values()))
        label = precision[0] if len(precision) == 1 else ", ".join(f"{k} {v}" for k, v in info["precision"].items())
        for group, s in groups.items():
            shipped = ratio_cell(doc["ratios"].get(engine, {}).get(group))
            alone = ratio_cell(doc.get("ratios_no_vad", {}).get(engine, {}).get(group))
            lines.append(f"| {engine} | {label} | {group} | {_cells(s, latency=True)} | {shipped} | {alone} |")
    lines += ["", "VAD: " + ", ".join(f"{e} {i['vad'] or 'none'}" for e, i in doc["engines"].items())
              + "; reject threshold: " + ", ".join(f"{e} {i['reject_threshold']}" for e, i in doc["engines"].items()
                                                   if i["reject_threshold"] is not None) + ".",
              "", "## Per voice", "", "| engine | voice | clips | WER | intent acc. | acted right | wrong actions "
              "| rejected |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for engine, voices in doc["by_voice"].items():
        for voice, s in voices.items():
            lines.append(f"| {engine} | {voice} | {_cells(s, latency=False)} |")
    lines += ["", "## Example errors (the intent said was not delivered)", "",
              "| engine | voice | said | heard | outcome |", "|---|---|---|---|---|"]
    for e in doc["examples"]:
        heard = e["hypothesis"] or "-"
        if e["language"] not in (None, "en"):
            heard += f" (language {e['language']})"
        lines.append(f"| {e['engine']} | {e['tts']}/{e['voice']} | {e['reference']} | {heard} | {e['outcome']} |")
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------


def parse_bundle(text: str) -> tuple[str, str]:
    """``NAME=PATH_OR_BUNDLE_NAME``, or a bundle name standing for both."""
    name, sep, source = text.partition("=")
    if not name or (sep and not source):
        raise argparse.ArgumentTypeError(f"--bundle {text!r}: give NAME=PATH_OR_BUNDLE_NAME, or a bundle name")
    return (name, source) if sep else (name, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=128, help="clips, half flite and half festival")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=parse_bundle, action="append", metavar="NAME=PATH_OR_BUNDLE_NAME",
                        help="a speech bundle to score, repeatable (default: speech-commands)")
    parser.add_argument("--whisper", default=None, help=f"a tinymm Whisper bundle (default: {WHISPER})")
    parser.add_argument("--no-whisper", action="store_true", help="skip Whisper (no latency ratio)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    parser.add_argument("--warmup", type=int, default=2, help="first clips scored but not timed")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "runs" / "speech-real-voices")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead of the Markdown")
    args = parser.parse_args(argv)
    if args.clips < 1 or not 0 <= args.warmup < args.clips:
        parser.error(f"--clips {args.clips} --warmup {args.warmup}: need clips >= 1 and 0 <= warmup < clips")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tinymm").setLevel(logging.WARNING)
    from tinymm.bench import collect_machine_facts

    start, load_start = time.perf_counter(), os.getloadavg()[0]
    clips = prepare_clips(plan_clips(args.clips, args.seed), args.clips_dir)
    whisper = None if args.no_whisper else (args.whisper or default_whisper())
    engines = load_engines(args.bundle or [("speech-commands", "speech-commands")], whisper, args.threads)
    rows = run_clips(engines, clips, args.warmup)
    facts = collect_machine_facts(threads=args.threads)
    given = sys.argv[1:] if argv is None else argv
    doc: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/speech_real_voices.py", *given]),
        "date": time.strftime("%Y-%m-%d"), "seconds": time.perf_counter() - start,
        "machine_summary": f"{facts.cpu_model}, {facts.cores_available or facts.cores_logical} cores, "
                           f"load average {load_start:.2f} at start and {os.getloadavg()[0]:.2f} at the end",
        "machine": facts.to_dict(), "threads": args.threads, "seed": args.seed, "clips": len(clips),
        "warmup": args.warmup, "reserved_for_evaluation": list(TTS_ENGINES), "apt_install": APT_INSTALL,
        "tts": {e: {"version": tts_version(e), "voices": sorted({c["voice"] for c in clips if c["engine"] == e}),
                    "clips": sum(c["engine"] == e for c in clips)} for e in TTS_ENGINES},
        "engines": {n: {k: v for k, v in e.items() if k != "pipeline"} for n, e in engines.items()},
        **summarize_rows(rows, list(engines), WHISPER if whisper else None),
        "target_ratio": TARGET_RATIO, "examples": example_errors(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speech_real_voices.json").write_text(json.dumps({**doc, "rows": rows}, indent=1) + "\n")
    markdown = render_markdown(doc)
    (args.out / "speech_real_voices.md").write_text(markdown)
    print(json.dumps(doc, indent=1) if args.json else markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
