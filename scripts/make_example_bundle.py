"""Build a small but real tinymm bundle, for `tinymm info` and the tests, until real bundles exist.

    python scripts/make_example_bundle.py example-bundle [--force]

The bundle holds an "image_encoder" ONNX graph built with onnx.helper (pixel_values
(batch, 3, 32, 32) float32 -> 8x8 patch Conv -> ReLU -> global average pool -> linear ->
image_embeds (batch, 16) float32) in two variants, fp32 and int8 (symmetric int8 weights with
DequantizeLinear, zero point 0), a 64-piece sentencepiece tokenizer trained here on a few dozen
scene sentences, the image and text preprocessing contract, golden input/output pairs computed
with onnxruntime, provenance and a model card. Its weights are random (seeded): it shows the
format, it does not understand images.

Needs the `onnx` package (pip install 'tinymm[dev]') besides the runtime.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tinymm import __version__
from tinymm.backends import BackendOptions, get_backend
from tinymm.bundle import BundleWriter, Component, GoldenPair, Preprocess, TensorSpec, Tolerance, Variant
from tinymm.errors import TinymmError
from tinymm.preprocess.config import ImageConfig, TextConfig

BUNDLE_NAME = "tinymm-example"
COMPONENT = "image_encoder"
IMAGE_SIZE = 32  # model input height and width, in pixels
CHANNELS = 3  # RGB
PATCH = 8  # Conv kernel size and stride, in pixels: (32 / 8)^2 = 16 patches
EMBED_DIM = 16  # width of the Conv features and of the output embedding
OPSET = 17  # ONNX opset of the graphs
IR_VERSION = 8  # ONNX IR version that goes with opset 17; every onnxruntime >= 1.14 reads it
INT8_MAX = 127  # symmetric int8 weights use [-127, 127]
GOLDEN_BATCH = 2  # examples in the golden pair
SEED = 0  # weights, golden images and tokenizer are all deterministic
FP32_MAX_ABS = 1e-4  # golden tolerance of the fp32 variant
INT8_MIN_COSINE = 0.99  # golden tolerance of the int8 variant
VOCAB_SIZE = 64  # sentencepiece pieces (a soft limit: fewer when the text is too small)
CONTEXT_LENGTH = 32  # tokens, prompt included
IMAGE_TOKEN = "<image>"  # special token where image embeddings would be spliced in
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3  # the ids TextConfig expects by default
MEAN = (0.5, 0.5, 0.5)  # per channel, on pixels scaled to [0, 1]
STD = (0.5, 0.5, 0.5)

_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SHAPES = ("circle", "square", "triangle", "star")
_PLACES = ("on the left", "on the right", "near the top", "at the bottom", "in the middle")
# A few dozen short scene sentences, the kind the real scene models describe.
SENTENCES = tuple(
    f"a {_COLORS[i % len(_COLORS)]} {_SHAPES[i % len(_SHAPES)]} {_PLACES[i % len(_PLACES)]}"
    for i in range(24)
) + (
    "how many circles are there",
    "what color is the square",
    "is there a sign that says stop",
    "the robot should turn left at the blue door",
    "two small triangles next to a big star",
    "a sign with the word exit above the door",
    "what shape is near the top",
    "three yellow squares and one red circle",
)


def make_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights: conv_w (16, 3, 8, 8), conv_b (16,), proj_w (16, 16), proj_b (16,)."""
    fan_in = CHANNELS * PATCH * PATCH
    return {
        "conv_w": (rng.standard_normal((EMBED_DIM, CHANNELS, PATCH, PATCH)) / np.sqrt(fan_in)).astype(np.float32),
        "conv_b": (0.1 * rng.standard_normal(EMBED_DIM)).astype(np.float32),
        "proj_w": (rng.standard_normal((EMBED_DIM, EMBED_DIM)) / np.sqrt(EMBED_DIM)).astype(np.float32),
        "proj_b": (0.1 * rng.standard_normal(EMBED_DIM)).astype(np.float32),
    }


def quantize_symmetric(weight: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Per-tensor symmetric int8 quantization: weight ~= q * scale, zero point 0."""
    scale = np.float32(np.abs(weight).max() / INT8_MAX)
    q = np.clip(np.round(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def build_encoder(weights: dict[str, np.ndarray], *, int8: bool):
    """The image encoder graph; with ``int8`` its Conv and MatMul weights are stored as int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(weights[name], name) for name in ("conv_b", "proj_b")]
    nodes = []
    for name in ("conv_w", "proj_w"):
        if int8:
            q, scale = quantize_symmetric(weights[name])
            initializers += [
                numpy_helper.from_array(q, f"{name}_q"),
                numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.array(0, dtype=np.int8), f"{name}_zero"),
            ]
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"], [name]))
        else:
            initializers.append(numpy_helper.from_array(weights[name], name))
    nodes += [
        helper.make_node(  # (B, 3, 32, 32) -> (B, 16, 4, 4)
            "Conv", ["pixel_values", "conv_w", "conv_b"], ["patches"], kernel_shape=[PATCH] * 2, strides=[PATCH] * 2
        ),
        helper.make_node("Relu", ["patches"], ["patches_relu"]),  # (B, 16, 4, 4)
        helper.make_node("GlobalAveragePool", ["patches_relu"], ["pooled"]),  # (B, 16, 1, 1)
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),  # (B, 16)
        helper.make_node("MatMul", ["features", "proj_w"], ["projected"]),
        helper.make_node("Add", ["projected", "proj_b"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"{COMPONENT}_{'int8' if int8 else 'fp32'}",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", CHANNELS, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=BUNDLE_NAME)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def train_tokenizer() -> bytes:
    """A sentencepiece unigram model trained on SENTENCES, as serialized bytes."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        user_defined_symbols=[IMAGE_TOKEN],
        minloglevel=2,  # warnings and errors only
    )
    return model.getvalue()


def golden_images(rng: np.random.Generator) -> np.ndarray:
    """GOLDEN_BATCH synthetic scenes (a colored square on a gradient), normalized: (B, 3, 32, 32) float32."""
    ramp = np.linspace(0, 255, IMAGE_SIZE, dtype=np.float32)
    images = np.empty((GOLDEN_BATCH, IMAGE_SIZE, IMAGE_SIZE, CHANNELS), dtype=np.float32)  # (B, H, W, C)
    for i in range(GOLDEN_BATCH):
        images[i] = ramp[None, :, None] * (i + 1) / GOLDEN_BATCH
        top, left = rng.integers(0, IMAGE_SIZE // 2, size=2)
        images[i, top : top + IMAGE_SIZE // 3, left : left + IMAGE_SIZE // 3] = rng.integers(0, 256, size=CHANNELS)
    mean, std = np.array(MEAN, dtype=np.float32), np.array(STD, dtype=np.float32)
    normalized = (images / 255.0 - mean) / std
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2), dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def model_card(command: str, int8_cosine: float) -> str:
    return f"""# {BUNDLE_NAME}

An example tinymm bundle built by `scripts/make_example_bundle.py`. Its weights are random
(seed {SEED}): it demonstrates the bundle format, the writer and `tinymm info`; it does not
understand images.

- `{COMPONENT}`: pixel_values (batch, {CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}) float32 ->
  {PATCH}x{PATCH} patch Conv -> ReLU -> global average pool -> linear -> image_embeds
  (batch, {EMBED_DIM}) float32.
- Variants: fp32, and int8 (symmetric per-tensor int8 weights, DequantizeLinear, zero point 0);
  int8 vs fp32 cosine on the golden inputs: {int8_cosine:.5f}.
- Tokenizer: sentencepiece unigram, up to {VOCAB_SIZE} pieces, trained on {len(SENTENCES)} scene
  sentences; `{IMAGE_TOKEN}` is a special token.
- Golden pair: {GOLDEN_BATCH} synthetic images and the fp32 outputs from onnxruntime (CPU).

Built with tinymm {__version__}: `{command}`
"""


def build(out_dir: Path, *, force: bool = False, command: str = "make_example_bundle.build()"):
    """Write the example bundle to ``out_dir`` and return the validated Bundle.

    ``command`` is recorded in the provenance and the model card as the way it was built.
    """
    import onnx

    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    with BundleWriter(out_dir, overwrite=force) as writer:
        files = {"fp32": f"{COMPONENT}.onnx", "int8": f"{COMPONENT}.int8.onnx"}
        for precision, file in files.items():
            onnx.save_model(build_encoder(weights, int8=precision == "int8"), str(writer.path(file)))
        tokenizer = writer.add_bytes("tokenizer.model", train_tokenizer())
        pixels = golden_images(rng)
        backend = get_backend("onnxruntime")
        outputs = {
            precision: backend.load(writer.path(file), BackendOptions(provider="cpu")).run({"pixel_values": pixels})
            for precision, file in files.items()
        }
        int8_cosine = cosine(outputs["int8"]["image_embeds"], outputs["fp32"]["image_embeds"])
        if int8_cosine < INT8_MIN_COSINE:
            raise SystemExit(f"int8 variant cosine {int8_cosine:.4f} is below its tolerance {INT8_MIN_COSINE}")
        writer.add_arrays(f"golden/{COMPONENT}.inputs.npz", {"pixel_values": pixels})
        writer.add_arrays(f"golden/{COMPONENT}.outputs.npz", outputs["fp32"])
        writer.add_text("README.md", model_card(command, int8_cosine))
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
        bundle = writer.write(
            name=BUNDLE_NAME,
            family="example",
            tasks=["embed"],
            components={
                COMPONENT: Component(
                    name=COMPONENT,
                    inputs=(TensorSpec("pixel_values", ("batch", CHANNELS, IMAGE_SIZE, IMAGE_SIZE), "float32"),),
                    outputs=(TensorSpec("image_embeds", ("batch", EMBED_DIM), "float32"),),
                    variants={precision: Variant(file) for precision, file in files.items()},
                )
            },
            preprocess=Preprocess(
                image=ImageConfig(height=IMAGE_SIZE, width=IMAGE_SIZE, mean=MEAN, std=STD),
                text=TextConfig(
                    tokenizer="tokenizer.model",
                    context_length=CONTEXT_LENGTH,
                    bos_id=BOS_ID,
                    eos_id=EOS_ID,
                    pad_id=PAD_ID,
                    unk_id=UNK_ID,
                    special_tokens={IMAGE_TOKEN: processor.piece_to_id(IMAGE_TOKEN)},
                    prompt_templates={"embed": f"{IMAGE_TOKEN} {{text}}"},
                ),
            ),
            golden=[
                GoldenPair(
                    component=COMPONENT,
                    inputs=f"golden/{COMPONENT}.inputs.npz",
                    outputs=f"golden/{COMPONENT}.outputs.npz",
                    tolerance={"fp32": Tolerance(max_abs=FP32_MAX_ABS), "int8": Tolerance(min_cosine=INT8_MIN_COSINE)},
                )
            ],
            provenance={
                "kind": "example: random weights, built by scripts/make_example_bundle.py, not trained",
                "command": command,
                "seed": SEED,
                "teacher": None,
                "data": f"{len(SENTENCES)} template sentences (tokenizer only); {GOLDEN_BATCH} synthetic golden images",
                "export": f"onnx.helper graph, opset {OPSET}, IR {IR_VERSION}; int8 = symmetric per-tensor weights",
                "metrics": {"int8_vs_fp32_cosine": round(int8_cosine, 6), "vocab_size": processor.get_piece_size()},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the bundle to (absent or empty)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle in OUT_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    try:
        command = "python scripts/make_example_bundle.py " + " ".join(sys.argv[1:] if argv is None else argv)
        bundle = build(args.out_dir, force=args.force, command=command)
    except TinymmError as e:
        print(f"make_example_bundle: error: {e}", file=sys.stderr)
        return e.exit_code
    total = bundle.manifest.total_bytes
    print(f"wrote bundle {bundle.name!r} to {args.out_dir} ({len(bundle.manifest.files)} files, {total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
