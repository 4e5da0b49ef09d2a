"""Write the synthetic scene dataset to disk, and read it back.

Layout (see also train/data/README.md)::

    DIR/scenes/meta.json                      generator version, command, seed, per-split configs and counts
    DIR/scenes/{split}/images/{index:06d}.png  lossless PNG, RGB content (JPEG artifacts are part of the render)
    DIR/scenes/{split}/annotations.jsonl      one JSON object per scene, in index order

Splits are train, val, test and heldout. Each split is its own random stream, and scene i of a
split depends only on (seed, split, i). The heldout split draws its sign fonts from HELDOUT_FONTS
and rasterizes the other way (direct instead of 2x supersampling), optionally at another image
size, to measure generalization beyond the training generator.

An annotation holds: ``id``, ``image`` (path relative to the split directory), ``width``,
``height``, ``seed``, ``stream``, ``index``, ``background``, ``objects`` (every attribute, plus
``bbox`` as [x0, y0, x1, y1] pixels and ``position``), ``relations`` ([i, relation, j] for each
clear relation between objects i and j), ``captions`` ([{text, facts}]), ``qa``
([{type, question, answer}]), ``labels`` and ``render`` (the augmentation applied).

``SceneDataset(DIR, split)[i]`` gives ``(image, annotation)``: image (H, W, 3) uint8 in RGB order,
the annotation as stored except that caption facts are frozensets of fact tuples.

CLI::

    python -m train.data.scene_dataset --out DIR --train 10000 --val 1000 --test 1000 --heldout 1000 \\
        --size 64 --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from tinymm.errors import EXIT_USAGE, InputError, TinymmError
from train.data.scene_language import (
    CAPTIONS_PER_SCENE,
    QA_TYPES,
    all_labels,
    facts_from_json,
    facts_to_json,
    make_captions,
    make_qa,
    scene_labels,
)
from train.data.scene_render import RenderConfig, image_grid, render_scene
from train.data.scene_world import (
    COLORS,
    FONT_SETS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIGN_TEXTS,
    SIZES,
    Scene,
    WorldConfig,
    clear_relation,
    sample_scene,
    scene_rngs,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when the same seed would give different scenes (2: "unclear" position answers)
FORMAT = "tinymm-scenes"
SCENES_DIR = "scenes"
SPLITS = ("train", "val", "test", "heldout")  # a split's stream id is its position here
DEFAULT_COUNTS = {"train": 10000, "val": 1000, "test": 1000, "heldout": 1000}
DEFAULT_WORKERS = 2
PREVIEW_SCENES = 64


@dataclass(frozen=True)
class SplitSpec:
    """Everything that determines one split's contents."""

    name: str  # one of SPLITS
    count: int  # number of scenes
    seed: int  # dataset seed (shared by the splits; the split name selects the stream)
    world: WorldConfig = WorldConfig()
    render: RenderConfig = RenderConfig()
    captions_per_scene: int = CAPTIONS_PER_SCENE

    def __post_init__(self) -> None:
        if self.name not in SPLITS:
            raise ValueError(f"split name {self.name!r} is not one of {list(SPLITS)}")
        for name in ("count", "seed", "captions_per_scene"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"split.{name}={value!r} must be a non-negative integer")

    @property
    def stream(self) -> int:
        return SPLITS.index(self.name)


def generate_example(world: WorldConfig, render: RenderConfig, seed: int, stream: int, index: int,
                     captions_per_scene: int = CAPTIONS_PER_SCENE) -> tuple[np.ndarray, dict[str, Any]]:
    """Scene `index` of stream `stream`: ((H, W, 3) uint8 RGB image, JSON-ready annotation).

    Usable on the fly (no disk); the dataset writer stores exactly this.
    """
    world_rng, render_rng, language_rng = scene_rngs(seed, stream, index)
    scene = sample_scene(world, world_rng)
    image, info = render_scene(scene, render, render_rng)
    captions = make_captions(scene, language_rng, captions_per_scene)
    qa = make_qa(scene, language_rng)
    scene_dict = scene.to_dict()
    relations = [[i, rel, j] for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects)
                 if i != j and (rel := clear_relation(a, b, scene.side)) is not None]
    annotation = {
        "id": index,
        "image": f"images/{index:06d}.png",
        "width": scene.width,
        "height": scene.height,
        "seed": seed,
        "stream": stream,
        "index": index,
        "background": scene_dict["background"],
        "objects": scene_dict["objects"],
        "relations": relations,
        "captions": [{"text": c.text, "facts": facts_to_json(c.facts)} for c in captions],
        "qa": [dataclasses.asdict(q) for q in qa],
        "labels": scene_labels(scene),
        "render": dataclasses.asdict(info),
    }
    return image, annotation


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 RGB image."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV failed to PNG-encode an image of shape {image.shape}")
    return data.tobytes()


def _init_worker() -> None:
    """One OpenCV thread per worker process: the processes already use the cores."""
    cv2.setNumThreads(1)


def _write_one(spec: SplitSpec, split_dir: str, index: int) -> str:
    """Worker: render scene `index`, write its PNG, return its annotation as one JSON line."""
    image, annotation = generate_example(spec.world, spec.render, spec.seed, spec.stream, index,
                                         spec.captions_per_scene)
    (Path(split_dir) / annotation["image"]).write_bytes(encode_png(image))
    return json.dumps(annotation, separators=(",", ":"))


def write_split(root: str | Path, spec: SplitSpec, workers: int = DEFAULT_WORKERS, progress: bool = True) -> float:
    """Write one split under root/scenes/<name>; returns the seconds it took."""
    split_dir = Path(root) / SCENES_DIR / spec.name
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    job = partial(_write_one, spec, str(split_dir))
    tmp = split_dir / "annotations.jsonl.partial"
    start = time.perf_counter()
    bar = partial(tqdm, total=spec.count, desc=f"scenes/{spec.name}", unit="scene", disable=not progress)
    with open(tmp, "w", encoding="utf-8") as out:
        if workers <= 1 or spec.count < 2 * workers:
            for line in bar(map(job, range(spec.count))):
                out.write(line + "\n")
        else:
            chunk = max(1, min(64, spec.count // (8 * workers)))
            # spawn, not fork: forking a process whose OpenCV thread pool is running can deadlock.
            with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for line in bar(pool.imap(job, range(spec.count), chunksize=chunk)):
                    out.write(line + "\n")
    tmp.replace(split_dir / "annotations.jsonl")
    return time.perf_counter() - start


def write_dataset(root: str | Path, specs: Sequence[SplitSpec], workers: int = DEFAULT_WORKERS,
                  overwrite: bool = False, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Write every split and root/scenes/meta.json; returns a summary (counts, seconds, scenes/s)."""
    scenes = Path(root) / SCENES_DIR
    if scenes.exists() and any(scenes.iterdir()):
        if not overwrite:
            raise InputError(f"{scenes} already holds a dataset; pass overwrite=True (--overwrite) to replace it, "
                             "or choose another output directory")
        shutil.rmtree(scenes)
    scenes.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "command": command,
        "seed": specs[0].seed if specs else 0,
        "image_format": "png",
        "channel_order": "RGB",
        "bbox_format": "xyxy pixels",
        "vocabulary": {"shapes": SHAPES, "colors": COLORS, "sizes": SIZES, "positions": POSITIONS,
                       "relations": RELATIONS, "sign_texts": SIGN_TEXTS, "qa_types": QA_TYPES},
        "labels": all_labels(),
        "splits": {},
    }
    total, seconds = 0, 0.0
    for spec in specs:
        elapsed = write_split(root, spec, workers, progress)
        meta["splits"][spec.name] = {
            "count": spec.count, "stream": spec.stream, "seed": spec.seed, "world": spec.world.to_dict(),
            "render": spec.render.to_dict(), "captions_per_scene": spec.captions_per_scene,
            "seconds": round(elapsed, 3),
        }
        total += spec.count
        seconds += elapsed
        logger.info("wrote %d %s scenes in %.1f s", spec.count, spec.name, elapsed)
    (scenes / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {"root": str(scenes), "scenes": total, "seconds": round(seconds, 3),
            "scenes_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "splits": {s.name: s.count for s in specs}}


# --- reading ---------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{what} {path} does not exist; write the dataset with "
                         "`python -m train.data.scene_dataset --out DIR`") from e
    except (OSError, ValueError) as e:
        raise InputError(f"{what} {path} is not readable JSON ({e}); rewrite the dataset") from e


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; InputError if it is missing or not an image."""
    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise InputError(f"image {path} is missing or not a decodable image; check the file or regenerate it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SceneDataset:
    """A written split: ``len(ds)``, ``ds[i] -> (image (H, W, 3) uint8 RGB, annotation)``, iteration.

    root is the --out directory (or its scenes/ subdirectory). Annotations are loaded at
    construction; images are decoded on access.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        self.root = root / SCENES_DIR if (root / SCENES_DIR / "meta.json").exists() else root
        self.meta: dict[str, Any] = _read_json(self.root / "meta.json", "scene dataset metadata")
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{self.root / 'meta.json'} has format {self.meta.get('format')!r}, not {FORMAT!r}")
        version = self.meta.get("generator_version")
        if not isinstance(version, int) or version > GENERATOR_VERSION:
            raise InputError(f"{self.root} was written by generator version {version!r}, newer than this "
                             f"reader ({GENERATOR_VERSION}); update tinymm or regenerate the dataset")
        if split not in self.meta.get("splits", {}):
            raise InputError(f"split {split!r} is not in {self.root}; it holds {sorted(self.meta.get('splits', {}))}")
        self.split = split
        self.split_dir = self.root / split
        path = self.split_dir / "annotations.jsonl"
        try:
            with open(path, encoding="utf-8") as f:
                self.annotations = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as e:
            raise InputError(f"annotations {path} are missing or not JSON lines ({e}); rewrite the split") from e
        expected = self.meta["splits"][split]["count"]
        if len(self.annotations) != expected:
            raise InputError(f"{path} has {len(self.annotations)} scenes but meta.json says {expected}; "
                             "the split was not written completely: rewrite it")

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        stored = self.annotations[index]  # IndexError past the end, as a sequence should
        annotation = dict(stored)
        annotation["captions"] = [{"text": c["text"], "facts": facts_from_json(c["facts"])} for c in stored["captions"]]
        return read_image_rgb(self.split_dir / stored["image"]), annotation

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for i in range(len(self)):
            yield self[i]

    def scene(self, index: int) -> Scene:
        """The ground-truth Scene of item index (for scene_language.fact_holds)."""
        return Scene.from_dict(self.annotations[index])


# --- CLI -------------------------------------------------------------------------------------------
def build_specs(counts: Mapping[str, int], size: int, seed: int, heldout_size: int | None = None,
                render_scale: int = 2, min_objects: int = 1, max_objects: int = 4) -> list[SplitSpec]:
    """The specs the CLI writes: train/val/test from one config, heldout with the held-out variations."""
    world = WorldConfig(width=size, height=size, min_objects=min_objects, max_objects=max_objects)
    render = RenderConfig(render_scale=render_scale)
    held_size = heldout_size or size
    heldout_world = dataclasses.replace(world, width=held_size, height=held_size, fonts=FONT_SETS["heldout"])
    heldout_render = dataclasses.replace(render, render_scale=1 if render_scale > 1 else 2)
    specs = []
    for name in SPLITS:
        if counts.get(name, 0) > 0:
            held = name == "heldout"
            specs.append(SplitSpec(name, counts[name], seed, heldout_world if held else world,
                                   heldout_render if held else render))
    return specs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.data.scene_dataset",
                                description="Generate the synthetic scene dataset (images, captions, QA, labels).")
    p.add_argument("--out", required=True, help="output directory; the dataset goes to OUT/scenes")
    for name in SPLITS:
        p.add_argument(f"--{name}", type=int, default=DEFAULT_COUNTS[name], metavar="N",
                       help=f"scenes in the {name} split (default {DEFAULT_COUNTS[name]}; 0 skips it)")
    p.add_argument("--size", type=int, default=64, help="image width and height in pixels (default 64)")
    p.add_argument("--heldout-size", type=int, default=None, help="image size of the heldout split (default --size)")
    p.add_argument("--render-scale", type=int, default=2,
                   help="supersampling factor of train/val/test (default 2; heldout uses the other of 1 and 2)")
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects per scene (default 1)")
    p.add_argument("--max-objects", type=int, default=4, help="most objects per scene (default 4)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/scenes")
    p.add_argument("--preview", metavar="PNG", help="also write a grid of the first train scenes to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    command = "python -m train.data.scene_dataset " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        counts = {name: getattr(args, name) for name in SPLITS}
        specs = build_specs(counts, args.size, args.seed, args.heldout_size, args.render_scale,
                            args.min_objects, args.max_objects)
        summary = write_dataset(args.out, specs, args.workers, args.overwrite, command, progress=not args.quiet)
        if args.preview and specs:
            ds = SceneDataset(args.out, specs[0].name)
            grid = image_grid([ds[i][0] for i in range(min(PREVIEW_SCENES, len(ds)))])
            cv2.imwrite(args.preview, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TinymmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['scenes']} scenes to {summary['root']} in {summary['seconds']:.1f} s "
              f"({summary['scenes_per_second']} scenes/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
