"""Real-size, randomly initialised Hugging Face checkpoints of the vision families, and their bundles.

Nothing can be downloaded, so each checkpoint directory is built here from its published config,
typed in (values in ``CONFIGS``), with random weights: the graphs, and so the speed, are the real
ones. Each directory holds what a downloaded one holds (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, preprocessor_config.json; SmolVLM also processor_config.json
and chat_template.json). The tokenizers are synthetic, of the real vocabulary size: a word-level
vocabulary of filler words with the checkpoint's special tokens at their real ids (CLIP, SigLIP);
for SmolVLM the tests' small byte-level BPE with SmolVLM's special tokens (tests/tiny_smolvlm.py),
its vocabulary filled with filler tokens up to the real 49280 ids.

One deliberate difference: SmolVLM's preprocessor_config.json has ``do_image_splitting`` off, so an
image is one 512 x 512 tile (64 image tokens) instead of up to 4 x 4 tiles plus the global image
(1088 tokens at 2048 px); the per-tile cost is the real one, a split image costs ~17x the vision part.

    python benchmarks/hf_families_models.py --cache runs/hf-speed [--only clip,siglip,smolvlm]

builds what is missing and exports it with ``python -m export hf SRC --out BUNDLE --precision
fp32,int8`` (log in CACHE/NAME.export.log).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("hf_families_models")

SEED = 0
# The published configs' values (transformers' defaults where they agree), typed in.
CONFIGS: dict[str, dict[str, Any]] = {
    "clip": {  # openai/clip-vit-base-patch32
        "checkpoint": "openai/clip-vit-base-patch32",
        "text": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                     pad_token_id=1),  # the legacy ids of the published config (argmax pooling)
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32),
        "projection_dim": 512, "logit_scale": 100.0,
    },
    "siglip": {  # google/siglip-base-patch16-224
        "checkpoint": "google/siglip-base-patch16-224",
        "text": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64, pad_token_id=1, eos_token_id=1),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16),
        "logit_scale": 10.0, "logit_bias": -10.0,
    },
    "smolvlm": {  # HuggingFaceTB/SmolVLM-256M-Instruct
        "checkpoint": "HuggingFaceTB/SmolVLM-256M-Instruct",
        "text": dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                     max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=False),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=512, patch_size=16),
        "scale_factor": 4, "image_seq_len": 64, "longest_edge": 2048, "resample": 1,  # Pillow LANCZOS
        "image_splitting": False,  # see the module docstring
    },
}


def _filler_vocab(size: int, specials: dict[str, int]) -> dict[str, int]:
    """``size`` tokens: the special ones at their ids, filler words ("w123") everywhere else."""
    from tests.tiny_contrastive import WORDS

    vocab = dict(specials)
    taken = set(specials.values())
    words = iter([*WORDS, ".", *(f"w{i}" for i in range(size))])
    for i in range(size):
        if i not in taken:
            word = next(words)
            while word in vocab:
                word = next(words)
            vocab[word] = i
    return vocab


def _word_level(vocab: dict[str, int], unk: str) -> Any:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def pad_bpe_vocab(path: Path, size: int) -> None:
    """Fill a BPE tokenizer.json's vocabulary with filler tokens up to ``size`` ids, so that every id the
    model can generate decodes; no merge reaches them, so encoding is unchanged."""
    document = json.loads(path.read_text(encoding="utf-8"))
    vocab = document["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in document.get("added_tokens", [])}
    for i in range(size):
        if i not in taken:
            vocab[f"w{i}"] = i
    path.write_text(json.dumps(document), encoding="utf-8")


def make_clip(directory: Path) -> None:
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    cfg = CONFIGS["clip"]
    size = cfg["text"]["vocab_size"]
    bos, eos = size - 2, size - 1  # 49406 <|startoftext|>, 49407 <|endoftext|>, as the real vocabulary
    tokenizer = _word_level(_filler_vocab(size, {"<|startoftext|>": bos, "<|endoftext|>": eos}), "<|endoftext|>")
    tokenizer.post_processor = TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                  special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}), encoding="utf-8")
    torch.manual_seed(SEED)
    model = CLIPModel(CLIPConfig(text_config=cfg["text"], vision_config=cfg["vision"],
                                 projection_dim=cfg["projection_dim"])).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg["logit_scale"]))
    model.save_pretrained(str(directory))
    side = cfg["vision"]["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}
                          ).save_pretrained(str(directory))


def make_siglip(directory: Path) -> None:
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    cfg = CONFIGS["siglip"]
    tokenizer = _word_level(_filler_vocab(cfg["text"]["vocab_size"], {"<pad>": 0, "</s>": 1, "<unk>": 2}), "<unk>")
    tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "</s>"}), encoding="utf-8")
    torch.manual_seed(SEED)
    model = SiglipModel(SiglipConfig(text_config=cfg["text"], vision_config=cfg["vision"])).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg["logit_scale"]))
        model.logit_bias.fill_(cfg["logit_bias"])
    model.save_pretrained(str(directory))
    side = cfg["vision"]["image_size"]
    SiglipImageProcessorPil(size={"height": side, "width": side}).save_pretrained(str(directory))


def make_smolvlm(directory: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from tests.tiny_smolvlm import CHAT_TEMPLATE, build_tokenizer

    cfg = CONFIGS["smolvlm"]
    build_tokenizer(directory / "tokenizer.json")
    pad_bpe_vocab(directory / "tokenizer.json", cfg["text"]["vocab_size"])
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    image_id, eos_id, bos_id = (tok.token_to_id(t) for t in ("<image>", "<end_of_utterance>", "<|im_start|>"))
    text = {**cfg["text"], "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": 0}
    config = SmolVLMConfig(text_config=text, vision_config=cfg["vision"], image_token_id=image_id,
                           scale_factor=cfg["scale_factor"], tie_word_embeddings=False)
    torch.manual_seed(SEED)
    SmolVLMForConditionalGeneration(config).eval().save_pretrained(directory)
    tile = cfg["vision"]["image_size"]
    files = {
        "generation_config.json": {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": 0},
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
                                  "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>",
                                  "unk_token": "<|endoftext|>", "model_max_length": 8192},
        "preprocessor_config.json": {
            "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": cfg["longest_edge"]},
            "resample": cfg["resample"], "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True,
            "do_image_splitting": cfg["image_splitting"], "max_image_size": {"longest_edge": tile}},
        "processor_config.json": {"processor_class": "SmolVLMProcessor", "image_seq_len": cfg["image_seq_len"]},
        "chat_template.json": {"chat_template": CHAT_TEMPLATE},
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content), encoding="utf-8")


BUILDERS: dict[str, Callable[[Path], None]] = {"clip": make_clip, "siglip": make_siglip, "smolvlm": make_smolvlm}


def ensure_source(name: str, cache: Path) -> Path:
    """CACHE/NAME-src, built once (a ``.done`` marker guards against half-written directories)."""
    directory = cache / f"{name}-src"
    if not (directory / ".done").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        BUILDERS[name](directory)
        (directory / ".done").write_text("ok\n")
        logger.info("built %s (%s, random weights) in %.0f s", directory, CONFIGS[name]["checkpoint"],
                    time.perf_counter() - start)
    return directory


UNGATED = "-int8-ungated"  # suffix of a bundle whose int8 ships whatever the gate says (see ensure_bundle)


def refused_int8(bundle: Path) -> list[str]:
    """The components of ``bundle`` that ship no int8 variant (the export's gate refused them)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return [name for name, c in manifest["components"].items() if "int8" not in c.get("variants", {})]


def ensure_bundle(name: str, cache: Path, extra: tuple[str, ...] = ()) -> Path:
    """CACHE/NAME (a bundle), exported from ensure_source's directory unless it already has a manifest.

    NAME + UNGATED is the same checkpoint exported with ``--max-metric-drop 100``: random weights give
    near-uniform logits and label scores whose choices flip under small quantization noise, so the
    gates refuse int8 for a reason real weights need not share; this bundle times int8 anyway."""
    bundle = cache / name
    if (bundle / "manifest.json").is_file():
        return bundle
    if name.endswith(UNGATED):
        name, extra = name[: -len(UNGATED)], (*extra, "--max-metric-drop", "100")
    source = ensure_source(name, cache)
    command = [sys.executable, "-m", "export", "hf", str(source), "--out", str(bundle), "--precision", "fp32,int8",
               "--force", "--json", "--no-progress", *extra]
    log = cache / f"{bundle.name}.export.log"
    logger.info("exporting %s (log: %s)", name, log)
    start = time.perf_counter()
    with log.open("w") as stream:
        stream.write(" ".join(command) + "\n")
        stream.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"export of {name} failed with exit code {done.returncode}; see {log}")
    logger.info("exported %s in %.0f s", name, time.perf_counter() - start)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "hf-speed")
    parser.add_argument("--only", default="clip,siglip,smolvlm", help=f"families, or FAMILY{UNGATED}")
    parser.add_argument("--eval-samples", type=int, default=None, help="passed to the export's int8 gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    extra = ("--eval-samples", str(args.eval_samples)) if args.eval_samples else ()
    for name in args.only.split(","):
        ensure_bundle(name, args.cache, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
