"""Does the vision model say when it does not know? Frames without scene objects against in-domain scenes.

    python benchmarks/vision_rejection.py [--bundle scene-vlm ...] [--precision fp32,int8] [--scenes 200]
        [--out benchmarks/results/vision_rejection.md]

Two sets, made in memory:

- out of domain: the sample photos of scikit-image (every one ``skimage.data`` ships without a
  download; reserved for evaluation, never trained or tuned on) and frames drawn here with their
  own code and seed: black, white, grey and flat colours, uniform and Gaussian noise, linear
  gradients, checkerboards and stripes;
- in domain: the first ``--scenes`` scenes of the recipe's test and heldout splits (seed 0,
  regenerated: ``train/data/scene_dataset.py``), with every question the generator asks of them.

Each bundle and precision captions every frame and answers QUESTIONS about it through the runtime
(``tinymm.load``). A caption *claims objects* when the caption parser reads anything in it but "no
objects"; an answer when it is not the empty answer ("zero", "no", "none"). A claim is *handled*
when the result is ``rejected`` (the domain check); the target is at most 5% of out-of-domain
captions and answers claiming objects unhandled. In domain, VQA and caption facts count a
rejected result as wrong. Writes a Markdown report and a JSON file next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tinymm  # noqa: E402
from train.data.scene_dataset import build_specs, generate_example  # noqa: E402
from train.data.scene_world import Scene  # noqa: E402
from train.metrics_vision import caption_correct  # noqa: E402
from train.vlm_eval_blank import caption_claims_objects  # noqa: E402

QUESTIONS = {  # question -> its empty answer
    "how many objects are there?": "zero",
    "what does the sign say?": "none",
    "is there a red circle?": "no",
    "what color is the circle?": "none",
}
TARGET_UNHANDLED = 0.05  # the bound on claims neither rejected nor empty
SYNTHETIC_PER_KIND = 4
PROBE_SEED = 20261207


def skimage_photos() -> list[tuple[str, str, np.ndarray]]:
    """(kind, name, (H, W, 3) uint8 RGB) for every sample photo skimage.data holds locally."""
    import skimage.data

    photos = []
    for name in skimage.data.__all__:
        loader = getattr(skimage.data, name)
        if not callable(loader) or name in ("download_all", "lfw_subset", "cells3d", "binary_blobs", "checkerboard"):
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # the samples that need a download (pooch) are skipped: nothing is fetched
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 32:
            continue
        image = image[..., :3]
        if image.dtype != np.uint8:
            image = image.astype(np.float64)
            image = np.clip(255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9), 0, 255).astype(np.uint8)
        photos.append(("photo", name, np.ascontiguousarray(image)))
    return photos


def synthetic_frames(size: int = 128, seed: int = PROBE_SEED) -> list[tuple[str, str, np.ndarray]]:
    """Flat frames, noise, gradients, checkerboards and stripes, SYNTHETIC_PER_KIND of each kind."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = [("flat", "black", np.zeros((size, size, 3))), ("flat", "white", np.full((size, size, 3), 255.0)),
              ("flat", "grey", np.full((size, size, 3), 128.0))]
    frames += [("flat", f"colour {i}", np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)))
               for i in range(SYNTHETIC_PER_KIND - 1)]
    for i in range(SYNTHETIC_PER_KIND):
        frames.append(("noise", f"uniform {i}", rng.uniform(0, 255, (size, size, 3))))
        frames.append(("noise", f"gaussian {i}", rng.normal(128, 50, (size, size, 1 + 2 * (i % 2))) * np.ones(3)))
        a, b, angle = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), rng.uniform(0, 2 * np.pi)
        t = np.clip((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5, 0, 1)[..., None]
        frames.append(("gradient", f"linear {i}", a + t * (b - a)))
        cell = int(rng.integers(4, 33))
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2)[..., None]
        frames.append(("checkerboard", f"cell {cell}", np.where(board, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))))
        period, angle = rng.uniform(6, 40) / size, rng.uniform(0, np.pi)
        band = ((np.floor((x * np.cos(angle) + y * np.sin(angle)) / period) % 2) > 0)[..., None]
        frames.append(("stripes", f"period {period * size:.0f}", np.where(band, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))))
    return [(k, n, np.ascontiguousarray(np.clip(np.rint(f), 0, 255).astype(np.uint8))) for k, n, f in frames]


def in_domain_scenes(count: int) -> dict[str, list[tuple[np.ndarray, dict[str, Any]]]]:
    """The first ``count`` scenes of the recipe's test and heldout splits (seed 0, size 64)."""
    specs = {s.name: s for s in build_specs({"test": count, "heldout": count}, 64, 0)}
    return {split: [generate_example(s.world, s.render, s.seed, s.stream, i) for i in range(count)]
            for split, s in specs.items()}


def run_ood(vlm: Any, frames: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    images = [f for _, _, f in frames]
    captions = vlm.caption(images, rgb=True)
    rows = [{"kind": k, "name": n, "caption": c.text, "rejected": c.rejected, "domain_score": c.domain_score,
             "claims": {"caption": caption_claims_objects(c.text)}, "answers": {}} for (k, n, _), c in zip(frames, captions)]
    for question, empty in QUESTIONS.items():
        for row, answer in zip(rows, vlm.ask(images, question, rgb=True)):
            row["answers"][question] = answer.answer
            row["claims"][question] = answer.answer.strip() != empty
    return {"frames": rows, **claim_summary(rows)}


def claim_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    outputs = [(row["rejected"], claim) for row in rows for claim in row["claims"].values()]
    kinds = sorted({row["kind"] for row in rows})
    return {
        "outputs": len(outputs),
        "claims": sum(c for _, c in outputs) / len(outputs),
        "unhandled": sum(c and not r for r, c in outputs) / len(outputs),
        "rejected_frames": sum(row["rejected"] for row in rows) / len(rows),
        "by_kind": {k: {"frames": sum(row["kind"] == k for row in rows),
                        "rejected": float(np.mean([row["rejected"] for row in rows if row["kind"] == k])),
                        "claims": float(np.mean([c for row in rows if row["kind"] == k for c in row["claims"].values()])),
                        "unhandled": float(np.mean([c and not row["rejected"] for row in rows if row["kind"] == k
                                                    for c in row["claims"].values()]))} for k in kinds},
    }


def run_in_domain(vlm: Any, scenes: list[tuple[np.ndarray, dict[str, Any]]]) -> dict[str, Any]:
    images = [image for image, _ in scenes]
    captions = vlm.caption(images, rgb=True)
    facts = [caption_correct(Scene.from_dict(a), c.text) for (_, a), c in zip(scenes, captions)]
    asked = [(i, qa) for i, (_, a) in enumerate(scenes) for qa in a["qa"]]
    answers = vlm.ask([images[i] for i, _ in asked], [qa["question"] for _, qa in asked], rgb=True)
    right = [a.answer.strip() == qa["answer"] for (_, qa), a in zip(asked, answers)]
    kept = [not a.rejected for a in answers]
    return {"scenes": len(scenes), "questions": len(asked), "rejected": float(np.mean([c.rejected for c in captions])),
            # a rejected result counts as wrong here; the *_unrejected figures ignore the domain check
            "vqa": float(np.mean(np.logical_and(right, kept))),
            "caption_facts": float(np.mean([f and not c.rejected for f, c in zip(facts, captions)])),
            "vqa_unrejected": float(np.mean(right)), "caption_facts_unrejected": float(np.mean(facts)),
            "max_domain_score": max((c.domain_score or 0.0) for c in captions)}


def report(args: argparse.Namespace, results: list[dict[str, Any]], seconds: float) -> str:
    kinds = ", ".join(f"{k} {v['frames']}" for k, v in results[0]["ood"]["by_kind"].items())
    lines = ["# Vision rejection: frames without scene objects against in-domain scenes", "",
             "```bash", "python benchmarks/vision_rejection.py " + shlex.join(sys.argv[1:]), "```", "",
             f"Machine: {platform.processor() or platform.machine()}, {platform.platform()}; {seconds:.0f} s. "
             f"Out of domain: {results[0]['ood']['outputs'] // (1 + len(QUESTIONS))} frames "
             f"({kinds}), a caption and "
             f"{len(QUESTIONS)} answers each. In domain: {args.scenes} test and {args.scenes} heldout scenes.", "",
             "| bundle | precision | threshold | OOD claims % | OOD rejected frames % | OOD claims unhandled % "
             f"(target <= {TARGET_UNHANDLED:.0%}) | test rejected % | test VQA % | test caption facts % | "
             "heldout rejected % | heldout VQA % | heldout caption facts % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o, t, h = r["ood"], r["test"], r["heldout"]
        lines.append(f"| {r['bundle']} | {r['precision']} | {r['threshold']:.4g} | {100 * o['claims']:.1f} | "
                     f"{100 * o['rejected_frames']:.1f} | **{100 * o['unhandled']:.1f}** | {100 * t['rejected']:.1f} | "
                     f"{100 * t['vqa']:.1f} | {100 * t['caption_facts']:.1f} | {100 * h['rejected']:.1f} | "
                     f"{100 * h['vqa']:.1f} | {100 * h['caption_facts']:.1f} |")
    lines += ["", "In domain with the check's rejections ignored (what the model answers):", "",
              "| bundle | precision | test VQA % | test caption facts % | heldout VQA % | heldout caption facts % |",
              "|---|---|---|---|---|---|"]
    for r in results:
        t, h = r["test"], r["heldout"]
        lines.append(f"| {r['bundle']} | {r['precision']} | {100 * t['vqa_unrejected']:.1f} | "
                     f"{100 * t['caption_facts_unrejected']:.1f} | {100 * h['vqa_unrejected']:.1f} | "
                     f"{100 * h['caption_facts_unrejected']:.1f} |")
    lines += ["", "By kind (claims % / rejected frames % / claims unhandled %):", "",
              "| bundle | precision | " + " | ".join(results[0]["ood"]["by_kind"]) + " |",
              "|---|---|" + "---|" * len(results[0]["ood"]["by_kind"])]
    for r in results:
        cells = [f"{100 * v['claims']:.0f} / {100 * v['rejected']:.0f} / {100 * v['unhandled']:.0f}"
                 for v in r["ood"]["by_kind"].values()]
        lines.append(f"| {r['bundle']} | {r['precision']} | " + " | ".join(cells) + " |")
    lines += ["", "Captions of the first frame of each kind (last bundle, last precision):", ""]
    seen: set[str] = set()
    for row in results[-1]["ood"]["frames"]:
        if row["kind"] not in seen:
            seen.add(row["kind"])
            lines.append(f"- {row['kind']} ({row['name']}): \"{row['caption']}\"; how many: "
                         f"\"{row['answers']['how many objects are there?']}\"; rejected {row['rejected']} "
                         f"(distance {'n/a' if row['domain_score'] is None else format(row['domain_score'], '.2f')})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", help="bundle name or path (repeatable; default scene-vlm)")
    parser.add_argument("--precision", default="fp32,int8", help="comma-separated precisions (default fp32,int8)")
    parser.add_argument("--scenes", type=int, default=200, help="in-domain scenes per split (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vision_rejection.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    frames = skimage_photos() + synthetic_frames()
    scenes = in_domain_scenes(args.scenes)
    results = []
    jobs = [(b, p) for b in (args.bundle or ["scene-vlm"]) for p in args.precision.split(",")]
    for bundle, precision in tqdm(jobs, desc="bundles", unit="run"):
        vlm = tinymm.load(bundle, precision=precision, threads=args.threads)
        results.append({"bundle": bundle, "precision": precision, "threshold": vlm.domain_threshold,
                        "ood": run_ood(vlm, frames),
                        **{split: run_in_domain(vlm, items) for split, items in scenes.items()}})
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(args, results, seconds))
    args.out.with_suffix(".json").write_text(json.dumps({"command": sys.argv, "results": results}, indent=1,
                                                        default=float) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
