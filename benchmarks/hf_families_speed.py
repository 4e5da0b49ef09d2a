"""Speed of the Hugging Face vision families at their real sizes (random weights): tinymm on
onnxruntime int8 and fp32 against transformers in torch eager fp32, interleaved in one process.

Usage:
    python benchmarks/hf_families_speed.py [--cache runs/hf-speed] [--threads 1,2] [--runs 12]
        [--warmup 2] [--decode-steps 16] [--out benchmarks/results] [--name hf_families_speed]

The checkpoints (benchmarks/hf_families_models.py: CLIP ViT-B/32, SigLIP base patch16-224,
SmolVLM-256M, published configs typed in, random weights) are built and exported into --cache
once. Tasks, all from one decoded (H, W, 3) uint8 image:

- ``clip-image`` / ``siglip-image``: image -> L2-normalised image embedding (preprocessing included);
- ``smolvlm-prefill``: image + a prompt of PROMPT_TOKENS text tokens -> the first generated token
  (tiling, vision encoder, embedding, prefill); tinymm through ``ask(..., max_new_tokens=1)``;
- ``smolvlm-decode``: one KV-cache decoder step with its greedy choice, after the same prefill
  (untimed); a fixed count of steps per call, since random weights would stop at EOS differently.

The torch variant runs transformers' model in ``torch.inference_mode()`` on the same inputs: the
pixels and token ids of the bundle's own numpy preprocessing, so only model execution differs.
Each round calls every variant of a task once, the first one rotated round by round. Runtime
overhead = end to end minus the time inside onnxruntime's run calls, as a share of the p50.
Writes ``NAME.json`` / ``.md`` / ``_latency.png`` under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.hf_families_models import CONFIGS, UNGATED, ensure_bundle, ensure_source, refused_int8  # noqa: E402
from benchmarks.whisper_engines import ort_clock  # noqa: E402
from tinymm.bench import collect_machine_facts, summarize  # noqa: E402

logger = logging.getLogger("hf_families_speed")

TASKS = ("clip-image", "siglip-image", "smolvlm-prefill", "smolvlm-decode")
VARIANTS = ("tinymm-int8", "tinymm-fp32", "torch-fp32")
EXTRA = "tinymm" + UNGATED  # where the gate refused int8: the same model exported with int8 forced
LABELS = {"tinymm-int8": "tinymm ORT int8", "tinymm-fp32": "tinymm ORT fp32", "torch-fp32": "transformers eager fp32",
          EXTRA: "tinymm ORT int8, gate overridden"}
IMAGE_HW = (480, 640)  # a VGA camera frame
PROMPT_TOKENS = 20  # text tokens of the SmolVLM prompt besides the image's tokens
QUESTION_WORDS = "what color is the star in this image and how many shapes are there on the mat".split()
MS_PER_S = 1000.0
TARGET_SPEEDUP = 2.0  # tinymm int8 vs transformers eager, end to end p50
TARGET_OVERHEAD_SHARE = 0.05  # (end to end - inside onnxruntime) / end to end, p50s

Sample = tuple[float, float]  # (end-to-end seconds, seconds inside onnxruntime)
Call = Callable[[], list[Sample]]


@dataclass(frozen=True)
class Task:
    name: str
    calls: dict[str, Call]  # variant -> one call, returning one sample (several for decode)
    loaded: dict[str, dict[str, str]]  # tinymm variant -> component -> model file it loaded


def test_image(seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 BGR: a smooth gradient with noise and shapes, as a decoded camera frame."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    image = np.empty((h, w, 3), np.uint8)
    image[:] = np.linspace(30, 220, w, dtype=np.uint8)[None, :, None]
    cv2.circle(image, (w // 3, h // 2), h // 5, (40, 40, 220), -1)
    cv2.rectangle(image, (w // 2, h // 4), (w - 40, h - 60), (200, 150, 30), -1)
    noise = rng.normal(0, 12, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _timed(clock: Any, body: Callable[[], Any]) -> Sample:
    clock.take()
    start = time.perf_counter()
    body()
    total = time.perf_counter() - start
    return total, clock.take()


def load_tinymm(bundle: Path, variant: str, threads: int) -> Any:
    """tinymm.load at the variant's precision; int8 loads what the export shipped, so a bundle whose
    gate refused every int8 component runs in fp32 (the "loaded" table says so)."""
    import tinymm
    from tinymm.errors import BundleError

    precision = "fp32" if variant == "tinymm-fp32" else "int8"
    try:
        return tinymm.load(bundle, precision=precision, threads=threads)
    except BundleError as e:
        logger.warning("%s: %s; loading what ships (fp32)", bundle.name, e)
        return tinymm.load(bundle, precision="fp32", threads=threads)


def _loaded(pipeline: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {n: Path(getattr(getattr(pipeline, n), "model_path", "?")).name for n in names}


# ---- CLIP / SigLIP ----------------------------------------------------------------------------


def contrastive_task(name: str, family: str, source: Path, bundle: Path, threads: int, image: np.ndarray,
                     torch_model: Any, ungated: Path | None = None) -> Task:
    import torch

    clock = ort_clock()
    pipes = {v: load_tinymm(bundle, v, threads) for v in VARIANTS[:2]}
    if ungated is not None:
        pipes[EXTRA] = load_tinymm(ungated, EXTRA, threads)
    calls: dict[str, Call] = {v: (lambda p=p: [_timed(clock, lambda: p.embed_image(image))]) for v, p in pipes.items()}
    preprocess = pipes["tinymm-fp32"].preprocessor

    def torch_call() -> list[Sample]:
        def body() -> None:
            with torch.inference_mode():
                out = torch_model.get_image_features(pixel_values=torch.from_numpy(preprocess([image])))
                features = out if isinstance(out, torch.Tensor) else out.pooler_output
                (features / features.norm(p=2, dim=-1, keepdim=True)).numpy()

        return [_timed(clock, body)]

    calls["torch-fp32"] = torch_call
    return Task(name, calls, {v: _loaded(p, ("image_encoder",)) for v, p in pipes.items()})


def load_torch(family: str, source: Path) -> Any:
    from transformers import CLIPModel, SiglipModel, SmolVLMForConditionalGeneration

    model_class = {"clip": CLIPModel, "siglip": SiglipModel, "smolvlm": SmolVLMForConditionalGeneration}[family]
    return model_class.from_pretrained(str(source)).eval()


# ---- SmolVLM --------------------------------------------------------------------------------


def prompt_question(pipeline: Any, image: np.ndarray) -> tuple[str, int, int]:
    """The question whose rendered prompt has PROMPT_TOKENS text tokens (or the fewest above), with
    (text tokens, total prompt length)."""
    image_id = pipeline.settings.image_token_id
    best = None
    for n in range(1, len(QUESTION_WORDS) + 1):
        question = " ".join(QUESTION_WORDS[:n]) + "?"
        _, ids = pipeline.preprocess(image, "ask", question)
        text = int(np.sum(ids != image_id))  # the image's special tokens count as text, as the processor's
        best = (question, text, len(ids))
        if text >= PROMPT_TOKENS:
            break
    return best


def smolvlm_tasks(source: Path, bundle: Path, threads: int, image: np.ndarray, torch_model: Any,
                  decode_steps: int, ungated: Path | None = None) -> tuple[Task, Task, dict[str, Any]]:
    import torch

    from tinymm.decoding import DecodingOptions
    from tinymm.decoding.prefix_embeds import PrefixEmbedsInference

    clock = ort_clock()
    pipes = {v: load_tinymm(bundle, v, threads) for v in VARIANTS[:2]}
    if ungated is not None:
        pipes[EXTRA] = load_tinymm(ungated, EXTRA, threads)
    question, text_tokens, length = prompt_question(pipes["tinymm-fp32"], image)
    pixels, ids = pipes["tinymm-fp32"].preprocess(image, "ask", question)
    one = DecodingOptions(max_new_tokens=1)
    prefill: dict[str, Call] = {v: (lambda p=p: [_timed(clock, lambda: p.ask(image, question, decoding=one))])
                                for v, p in pipes.items()}
    # decode: every call starts from the same prefilled state, made once (the prefill is timed above)
    decode: dict[str, Call] = {}
    for variant, p in pipes.items():
        features = p.vision_encoder.run({"pixel_values": pixels}, ["image_features"])["image_features"]
        prefilled = PrefixEmbedsInference(p.embed_tokens, p.decoder_first, p.decoder_with_past,
                                          features.reshape(-1, features.shape[-1]), p.settings.image_token_id,
                                          p.num_layers)
        first_logits = prefilled.prefill(ids[None, :])

        def tinymm_steps(prefilled: Any = prefilled, first_logits: np.ndarray = first_logits) -> list[Sample]:
            inference = copy.copy(prefilled)  # step() replaces its ids and cache, never writes into them
            state = {"logits": first_logits}

            def step() -> None:
                state["logits"] = inference.step(np.argmax(state["logits"], axis=-1))

            return [_timed(clock, step) for _ in range(decode_steps)]

        decode[variant] = tinymm_steps
    with torch.inference_mode():
        torch_first = torch_model(input_ids=torch.from_numpy(ids[None, :]), pixel_values=torch.from_numpy(pixels[None]),
                                  use_cache=True, logits_to_keep=1)

    def torch_prefill() -> list[Sample]:
        def body() -> None:
            # the same preprocessing as tinymm's (numpy), so only the model differs
            p_pixels, p_ids = pipes["tinymm-fp32"].preprocess(image, "ask", question)
            with torch.inference_mode():
                out = torch_model(input_ids=torch.from_numpy(p_ids[None, :]), pixel_values=torch.from_numpy(
                    p_pixels[None]), use_cache=True, logits_to_keep=1)  # as generate() does
                out.logits[:, -1].argmax(-1)

        return [_timed(clock, body)]

    def torch_steps() -> list[Sample]:
        with torch.inference_mode():
            # the cache grows in place: each call decodes from a copy of the prefilled one
            state = {"out": SimpleNamespace(logits=torch_first.logits, cache=copy.deepcopy(torch_first.cache))}

            def step() -> None:
                previous = state["out"]
                token = previous.logits[:, -1].argmax(-1, keepdim=True)
                state["out"] = torch_model(input_ids=token, cache=previous.cache, use_cache=True)

            return [_timed(clock, step) for _ in range(decode_steps)]

    prefill["torch-fp32"], decode["torch-fp32"] = torch_prefill, torch_steps
    names = ("vision_encoder", "embed_tokens", "decoder_first", "decoder_with_past")
    loaded = {v: _loaded(p, names) for v, p in pipes.items()}
    prompt = {"question": question, "text_tokens": text_tokens, "prompt_tokens": length,
              "tiles": int(pixels.shape[0]), "decode_steps_per_call": decode_steps}
    return Task("smolvlm-prefill", prefill, loaded), Task("smolvlm-decode", decode, loaded), prompt


# ---- the study --------------------------------------------------------------------------------


def interleave(tasks: list[Task], runs: int, warmup: int) -> dict[str, dict[str, list[Sample]]]:
    """Round-robin: every round calls each task's variants once, the first one rotated each round."""
    samples: dict[str, dict[str, list[Sample]]] = {t.name: {v: [] for v in t.calls} for t in tasks}
    for round_index in range(warmup + runs):
        for task in tasks:
            names = list(task.calls)
            shift = round_index % len(names)
            for variant in names[shift:] + names[:shift]:
                got = task.calls[variant]()
                if round_index >= warmup:
                    samples[task.name][variant].extend(got)
        logger.info("round %d/%d done", round_index + 1, warmup + runs)
    return samples


def _ms(values: list[float]) -> dict[str, float]:
    s = summarize(values)
    return {"p50": s.p50_s * MS_PER_S, "p90": s.p90_s * MS_PER_S, "p99": s.p99_s * MS_PER_S,
            "mean": s.mean_s * MS_PER_S, "n": s.count}


def summarize_samples(samples: dict[str, dict[str, list[Sample]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task, variants in samples.items():
        out[task] = {}
        for variant, rows in variants.items():
            entry: dict[str, Any] = {"total": _ms([t for t, _ in rows])}
            if variant.startswith("tinymm"):
                entry["onnxruntime"] = _ms([m for _, m in rows])
                entry["overhead"] = _ms([t - m for t, m in rows])
                entry["overhead_share"] = entry["overhead"]["p50"] / entry["total"]["p50"]
            out[task][variant] = entry
        torch_p50 = out[task]["torch-fp32"]["total"]["p50"]
        for variant, entry in out[task].items():
            entry["speedup_vs_torch"] = torch_p50 / entry["total"]["p50"]
    return out


def judge(latency: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task, variants in latency.items():
        int8 = variants["tinymm-int8"]
        rows.append({"target": f"{task}: tinymm int8 >= {TARGET_SPEEDUP:g}x transformers eager (p50)",
                     "measured": f"{int8['speedup_vs_torch']:.2f}x", "met": int8["speedup_vs_torch"] >= TARGET_SPEEDUP})
        rows.append({"target": f"{task}: tinymm int8 runtime overhead <= {TARGET_OVERHEAD_SHARE:.0%}",
                     "measured": f"{int8['overhead_share']:.1%} ({int8['overhead']['p50']:.2f} ms of "
                                 f"{int8['total']['p50']:.1f} ms)", "met": int8["overhead_share"] <= TARGET_OVERHEAD_SHARE})
        if EXTRA in variants:  # not what ships: informational
            e = variants[EXTRA]
            rows.append({"target": f"{task}: (not shipped) int8 with the gate overridden, same two targets",
                         "measured": f"{e['speedup_vs_torch']:.2f}x; overhead {e['overhead_share']:.1%}",
                         "met": e["speedup_vs_torch"] >= TARGET_SPEEDUP and e["overhead_share"] <= TARGET_OVERHEAD_SHARE})
    return rows


def run_study(bundles: dict[str, tuple[Path, Path]], threads_list: list[int], runs: int, warmup: int,
              decode_steps: int) -> dict[str, Any]:
    """bundles: family (or FAMILY + UNGATED) -> (checkpoint dir, bundle dir). Returns the study's document
    without the header."""
    import torch

    image = test_image()
    models = {family: load_torch(family, bundles[family][0]) for family in ("clip", "siglip", "smolvlm")}
    doc: dict[str, Any] = {"threads": {}}
    for threads in threads_list:
        torch.set_num_threads(threads)
        ungated = {f: bundles[f + UNGATED][1] if f + UNGATED in bundles else None for f in models}
        tasks = [contrastive_task(f"{f}-image", f, *bundles[f], threads, image, models[f], ungated[f])
                 for f in ("clip", "siglip")]
        prefill, decode, prompt = smolvlm_tasks(*bundles["smolvlm"], threads, image, models["smolvlm"], decode_steps,
                                                ungated["smolvlm"])
        tasks += [prefill, decode]
        logger.info("%d thread(s): %d rounds (%d warmup)", threads, warmup + runs, warmup)
        load = os.getloadavg()
        latency = summarize_samples(interleave(tasks, runs, warmup))
        doc["threads"][str(threads)] = {"latency": latency, "targets": judge(latency),
                                        "load_average": {"start": list(load), "end": list(os.getloadavg())}}
        doc["loaded"] = {t.name: t.loaded for t in tasks}
        doc["smolvlm_prompt"] = prompt
    return doc


# ---- report -------------------------------------------------------------------------------------


def render_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Hugging Face vision families at real size (random weights): tinymm vs transformers", "",
             f"Command: `{doc['command']}`", "", f"Machine: {doc['machine_summary']}", "",
             f"Load average (1, 5, 15 min): {doc['load_average']['start']} before, {doc['load_average']['end']} after.",
             "", f"Image: a {IMAGE_HW[1]}x{IMAGE_HW[0]} BGR frame. SmolVLM prompt: {doc['smolvlm_prompt']}.", "",
             "Models (published configs typed in, random weights): "
             + "; ".join(f"{k} = {v['checkpoint']}" for k, v in doc["configs"].items()) + ".", "",
             "Components without an int8 variant in the bundle (the gate refused it; SmolVLM's export quantizes "
             "only its two decoders): " + "; ".join(f"{f}: {', '.join(n) or 'none'}" for f, n in
                                                    doc.get("int8_refused_by_gate", {}).items()) + ".", "",
             "## What each tinymm variant loaded (int8 where the export's gate shipped it)", "",
             "| task | variant | model files loaded |", "|---|---|---|"]
    for task, loaded in doc["loaded"].items():
        lines += [f"| {task} | {v} | " + ", ".join(f"{c}: {f}" for c, f in files.items()) + " |"
                  for v, files in loaded.items()]
    for threads, part in doc["threads"].items():
        load = part["load_average"]
        lines += ["", f"## {threads} thread(s) (load average {load['start'][0]:.2f} -> {load['end'][0]:.2f})", "",
                  "| task | variant | p50 ms | p90 ms | p99 ms | n | vs torch (p50) | overhead p50 ms (share) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for task, variants in part["latency"].items():
            for variant, e in variants.items():
                t = e["total"]
                over = f"{e['overhead']['p50']:.2f} ({e['overhead_share']:.1%})" if "overhead" in e else "-"
                lines.append(f"| {task} | {LABELS[variant]} | {t['p50']:.1f} | {t['p90']:.1f} | {t['p99']:.1f} | "
                             f"{t['n']} | {e['speedup_vs_torch']:.2f}x | {over} |")
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else 'no'} |" for r in part["targets"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = doc["threads"]
    fig, axes = plt.subplots(len(parts), len(TASKS), figsize=(3.6 * len(TASKS), 3.2 * len(parts) + 0.8),
                             squeeze=False)
    for row, (threads, part) in zip(axes, parts.items()):
        for ax, task in zip(row, TASKS):
            variants = part["latency"][task]
            names = [v for v in (*VARIANTS, EXTRA) if v in variants]
            p50 = [variants[v]["total"]["p50"] for v in names]
            p90 = [variants[v]["total"]["p90"] for v in names]
            ax.bar(range(len(names)), p50, yerr=[[0] * len(names), [hi - lo for lo, hi in zip(p50, p90)]], capsize=3,
                   color=["#66c2a5", "#8da0cb", "#fc8d62", "#e78ac3"][: len(names)])
            ax.plot(range(len(names)), [variants[v]["total"]["p99"] for v in names], "k.")
            for i, v in enumerate(names):
                ax.annotate(f"{variants[v]['speedup_vs_torch']:.2f}x", (i, p50[i]), ha="center", va="bottom", fontsize=6)
            ax.set_xticks(range(len(names)), [LABELS[v].replace("transformers ", "hf ").replace(", gate overridden",
                                                                                               "\n(ungated)")
                                              for v in names], rotation=15, fontsize=6)
            ax.set_title(f"{task}, {threads} thread(s)", fontsize=9)
            ax.set_ylabel("ms (p50 bar, p90 whisker, p99 dot)", fontsize=7)
    fig.text(0.01, 0.01, f"{doc['command']}\n{doc['machine_summary'][:200]}", fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_summary() -> tuple[dict[str, Any], str]:
    facts = collect_machine_facts()
    return facts.to_dict(), facts.summary()


def write_report(doc: dict[str, Any], out: Path, name: str, plots: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}_latency.png"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(doc), encoding="utf-8")
    if plots:
        plot(doc, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "hf-speed", help="checkpoints and bundles")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decode-steps", type=int, default=16, help="decoder steps per decode call")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="hf_families_speed")
    parser.add_argument("--no-ungated", action="store_true",
                        help=f"leave out {EXTRA} (a family whose gate refused int8, exported with int8 forced)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("tinymm", "export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    bundles = {f: (ensure_source(f, args.cache), ensure_bundle(f, args.cache)) for f in ("clip", "siglip", "smolvlm")}
    refused = {f: refused_int8(b) for f, (_, b) in bundles.items()}
    for family in [f for f, names in refused.items() if names and not args.no_ungated]:
        bundles[family + UNGATED] = (bundles[family][0], ensure_bundle(family + UNGATED, args.cache))
    start_load = list(os.getloadavg())
    doc = run_study(bundles, [int(t) for t in args.threads.split(",")], args.runs, args.warmup, args.decode_steps)
    facts, summary = machine_summary()
    doc.update({"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": facts,
                "machine_summary": summary, "configs": CONFIGS,
                "load_average": {"start": start_load, "end": list(os.getloadavg())},
                "settings": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads},
                "int8_refused_by_gate": refused})
    for path in write_report(doc, args.out, args.name).values():
        logger.info("wrote %s", path)
    sys.stdout.write(render_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
