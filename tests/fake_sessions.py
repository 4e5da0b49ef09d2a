"""Tiny deterministic models for the decoding, pipeline, stream and CLI tests.

``TinyVLM`` is a vision-language "model" in numpy that follows the bundle layout
(export/LAYOUT.md) with real KV-cache shapes. Its next-token logits depend on the current token,
its absolute position, the sum of every earlier token's layer-0 key (so a wrong cache changes
them) and the image's layer-0 cross key::

    logits[b, t] = A[x_t] + P[past + t] + (sum_{s <= t} E0[x_s]) @ W + mean(cross.0.key[b]) * u

``FakeSession`` wraps a numpy function as a backend Session (feeds checked like the real
backend's); ``vlm_sessions`` gives the four components. ``ScriptedSpeechEncoder`` emits a fixed
CTC label path per clip. The ``*_onnx`` builders write the same functions as ONNX graphs
(onnx.helper; the onnx package is test-only) and ``write_*_bundle`` wraps them in real bundles
for the tests that go through ``tinymm.load`` and the CLI.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tinymm.backends.base import TensorSpec, check_feeds
from tinymm.decoding import kv_names

F32 = np.float32
OPSET, IR_VERSION = 17, 8  # loadable by every supported onnxruntime
VLM_TEMPLATES = {"caption": "caption:", "ask": "question: {question} answer:", "classify": "{label}"}
SCENE_SENTENCES = (
    "a red circle on the left", "a blue square on the right", "two green triangles", "a yellow star",
    "a purple cross near the top", "an orange diamond at the bottom", "what color is the star", "red", "blue",
    "how many circles are there", "three", "is there a square", "yes", "no", "caption:", "question: answer:",
)
COMMAND_SENTENCES = (
    "go forward three meters", "turn left", "turn right", "stop", "what color is the star",
    "pick up the red circle", "move back two meters", "how many squares are there", "put it down",
)


# ---------------------------------------------------------------------------------------------
# Sessions


class FakeSession:
    """A backend Session computing ``fn(feeds) -> outputs`` in numpy; records each run's batch size."""

    provider = "cpu"

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], fn: Callable, delay_s: float = 0.0):
        self.inputs, self.outputs, self._fn, self.delay_s = tuple(inputs), tuple(outputs), fn, delay_s
        self.batch_sizes: list[int] = []  # the batch size of each run, in order

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds)
        self.batch_sizes.append(next(iter(feeds.values())).shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        out = self._fn(dict(feeds))
        return {name: out[name] for name in (output_names or [s.name for s in self.outputs])}


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.sqrt((x * x).sum(axis=-1, keepdims=True))).astype(F32)


class TinyVLM:
    """Random (seeded) weights of a tiny vision-language model and its numpy forward functions."""

    def __init__(self, vocab: int, *, layers: int = 2, heads: int = 2, head_dim: int = 4, image_tokens: int = 3,
                 hidden: int = 6, image_size: int = 16, embed_dim: int = 8, max_length: int = 24, eos_id: int = 2,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab, self.layers, self.heads, self.head_dim = vocab, layers, heads, head_dim
        self.image_tokens, self.hidden, self.image_size, self.embed_dim = image_tokens, hidden, image_size, embed_dim
        self.max_length, self.eos_id = max_length, eos_id
        kv = heads * head_dim
        self.A = rng.standard_normal((vocab, vocab)).astype(F32)
        self.P = (0.5 * rng.standard_normal((max_length, vocab))).astype(F32)
        self.P[:, eos_id] += np.linspace(-4.0, 8.0, max_length, dtype=F32)  # EOS grows likelier with length
        self.E = (0.5 * rng.standard_normal((layers, vocab, kv))).astype(F32)
        self.W = (0.5 * rng.standard_normal((kv, vocab))).astype(F32)
        self.u = (4.0 * rng.standard_normal(vocab)).astype(F32)  # strong enough that images change captions
        self.R = rng.standard_normal((3, heads * image_tokens * head_dim)).astype(F32)
        self.Re = rng.standard_normal((3, image_tokens * hidden)).astype(F32)
        self.Q = rng.standard_normal((3, embed_dim)).astype(F32)
        self.T = rng.standard_normal((vocab, embed_dim)).astype(F32)

    def kv_spec(self, name: str, length: int | str) -> TensorSpec:
        return TensorSpec(name, ("batch", self.heads, length, self.head_dim), "float32")

    def image_encoder(self, feeds: dict) -> dict:
        f = feeds["pixel_values"].mean(axis=(2, 3))  # (B, 3)
        ck = np.tanh(f @ self.R).reshape(-1, self.heads, self.image_tokens, self.head_dim)
        out = {"image_embeds": (f @ self.Re).reshape(-1, self.image_tokens, self.hidden).astype(F32),
               "image_embedding": _normalize(f @ self.Q)}
        for i in range(self.layers):
            out[f"cross.{i}.key"], out[f"cross.{i}.value"] = (ck * (i + 1)).astype(F32), (ck * -(i + 1)).astype(F32)
        return out

    def text_encoder(self, feeds: dict) -> dict:
        mask = feeds["attention_mask"].astype(F32)[..., None]  # (B, S, 1)
        pooled = (self.T[feeds["input_ids"]] * mask).sum(axis=1) / mask.sum(axis=1)
        return {"text_embedding": _normalize(pooled)}

    def decoder(self, feeds: dict) -> dict:
        ids = feeds["input_ids"]  # (B, S)
        batch, seq = ids.shape
        past = [(feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"])
                for i in range(self.layers)] if "past_key_values.0.key" in feeds else None
        past_len = 0 if past is None else past[0][0].shape[2]
        running = np.cumsum(self.E[0][ids], axis=1)  # (B, S, H*D)
        if past is not None:
            running = running + past[0][0].sum(axis=2).reshape(batch, 1, -1)
        cross = feeds["cross.0.key"].mean(axis=(1, 2, 3))[:, None, None]  # (B, 1, 1)
        logits = self.A[ids] + self.P[past_len: past_len + seq][None] + running @ self.W + cross * self.u
        out = {"logits": logits.astype(F32)}
        for i in range(self.layers):
            new = self.E[i][ids].reshape(batch, seq, self.heads, self.head_dim).transpose(0, 2, 1, 3)
            key = new if past is None else np.concatenate([past[i][0], new], axis=2)
            value = -new if past is None else np.concatenate([past[i][1], -new], axis=2)
            out[f"present.{i}.key"], out[f"present.{i}.value"] = key.astype(F32), value.astype(F32)
        return out

    def specs(self) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
        """Component -> (inputs, outputs) as the layout names them."""
        cross = tuple(self.kv_spec(n, self.image_tokens) for n in kv_names("cross", self.layers))
        logits = TensorSpec("logits", ("batch", "seq", self.vocab), "float32")
        ids = TensorSpec("input_ids", ("batch", "seq"), "int64")
        size = self.image_size
        return {
            "image_encoder": ((TensorSpec("pixel_values", ("batch", 3, size, size), "float32"),),
                              (TensorSpec("image_embeds", ("batch", self.image_tokens, self.hidden), "float32"),
                               TensorSpec("image_embedding", ("batch", self.embed_dim), "float32"), *cross)),
            "text_encoder": ((ids, TensorSpec("attention_mask", ("batch", "seq"), "int64")),
                             (TensorSpec("text_embedding", ("batch", self.embed_dim), "float32"),)),
            "decoder_first": ((ids, *cross),
                              (logits, *(self.kv_spec(n, "seq") for n in kv_names("present", self.layers)))),
            "decoder_with_past": (
                (TensorSpec("input_ids", ("batch", "new"), "int64"),
                 *(self.kv_spec(n, "past") for n in kv_names("past_key_values", self.layers)), *cross),
                (TensorSpec("logits", ("batch", "new", self.vocab), "float32"),
                 *(self.kv_spec(n, "past+new") for n in kv_names("present", self.layers)))),
        }

    def model_info(self, labels: Sequence[str] = ()) -> dict[str, Any]:
        return {"num_layers": self.layers, "num_heads": self.heads, "head_dim": self.head_dim,
                "max_length": self.max_length, "embed_dim": self.embed_dim, "logit_scale": 10.0,
                "max_new_tokens": 8, "labels": list(labels)}


def vlm_sessions(model: TinyVLM, delay_s: float = 0.0) -> dict[str, FakeSession]:
    """The four components of ``model`` as FakeSessions."""
    fns = {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder,
           "decoder_first": model.decoder, "decoder_with_past": model.decoder}
    return {name: FakeSession(*spec, fns[name], delay_s) for name, spec in model.specs().items()}


class ScriptedSpeechEncoder(FakeSession):
    """A speech_encoder whose row r emits ``paths[r]`` (label ids, blank-padded) on its first frames.

    Output frames are ceil(frames / 2), output_lengths (feature_lengths + 1) // 2, as the ONNX
    speech graph computes them.
    """

    def __init__(self, paths: Sequence[Sequence[int]], vocab: int, n_mels: int, blank_id: int = 0) -> None:
        self.paths, self.vocab, self.blank_id = [list(p) for p in paths], vocab, blank_id
        inputs = (TensorSpec("features", ("batch", n_mels, "frames"), "float32"),
                  TensorSpec("feature_lengths", ("batch",), "int64"))
        outputs = (TensorSpec("log_probs", ("batch", "out_frames", vocab), "float32"),
                   TensorSpec("output_lengths", ("batch",), "int64"))
        super().__init__(inputs, outputs, self._emit)

    def _emit(self, feeds: dict) -> dict:
        batch, frames = feeds["features"].shape[0], (feeds["features"].shape[2] + 1) // 2
        labels = np.full((batch, frames), self.blank_id, dtype=np.int64)
        for r in range(batch):
            path = self.paths[r % len(self.paths)][:frames]
            labels[r, : len(path)] = path
        logits = np.full((batch, frames, self.vocab), -5.0, dtype=F32)
        np.put_along_axis(logits, labels[..., None], 5.0, axis=2)
        log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
        return {"log_probs": log_probs.astype(F32), "output_lengths": (feeds["feature_lengths"] + 1) // 2}


# ---------------------------------------------------------------------------------------------
# Tokenizers


def train_sentencepiece(path: Path, sentences: Sequence[str], vocab_size: int, user_symbols: Sequence[str] = ()) -> Path:
    """A small unigram sentencepiece model (pad 0, bos 1, eos 2, unk 3) trained on ``sentences``."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2,
        num_threads=1, user_defined_symbols=list(user_symbols),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# The same models as ONNX graphs, and bundles of them


def _save(nodes: list, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
          initializers: Mapping[str, np.ndarray], path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    types = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(s.name, types[s.dtype], list(s.shape)) for s in inputs],
        [helper.make_tensor_value_info(s.name, types[s.dtype], list(s.shape)) for s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def i64(*values: int) -> np.ndarray:
    """A 1-D int64 initializer (shapes, axes)."""
    return np.array(values, dtype=np.int64)


def scalar(value: int) -> np.ndarray:
    """A 0-d int64 initializer (Gather indices, Range bounds, the CumSum axis)."""
    return np.array(value, dtype=np.int64)


def _normalize_nodes(x: str, out: str) -> list:
    from onnx import helper as h

    return [h.make_node("Mul", [x, x], [f"{out}_sq"]), h.make_node("ReduceSum", [f"{out}_sq", "axis_last"], [f"{out}_ss"], keepdims=1),
            h.make_node("Sqrt", [f"{out}_ss"], [f"{out}_norm"]), h.make_node("Div", [x, f"{out}_norm"], [out])]


def vlm_onnx(model: TinyVLM, directory: Path) -> dict[str, Path]:
    """The four components of ``model`` as ONNX files in ``directory``: component -> path."""
    from onnx import helper as h

    specs, L, H, D, N = model.specs(), model.layers, model.heads, model.head_dim, model.image_tokens
    image = [h.make_node("ReduceMean", ["pixel_values"], ["f"], axes=[2, 3], keepdims=0),
             h.make_node("MatMul", ["f", "R"], ["fr"]), h.make_node("Tanh", ["fr"], ["ck_flat"]),
             h.make_node("Reshape", ["ck_flat", "ck_shape"], ["ck"]),
             h.make_node("MatMul", ["f", "Re"], ["emb_flat"]), h.make_node("Reshape", ["emb_flat", "emb_shape"], ["image_embeds"]),
             h.make_node("MatMul", ["f", "Q"], ["fq"]), *_normalize_nodes("fq", "image_embedding")]
    image_init = {"R": model.R, "Re": model.Re, "Q": model.Q, "ck_shape": i64(-1, H, N, D),
                  "emb_shape": i64(-1, N, model.hidden), "axis_last": i64(-1)}
    for i in range(L):
        image_init[f"k{i}"], image_init[f"v{i}"] = np.array(i + 1, F32), np.array(-(i + 1), F32)
        image += [h.make_node("Mul", ["ck", f"k{i}"], [f"cross.{i}.key"]), h.make_node("Mul", ["ck", f"v{i}"], [f"cross.{i}.value"])]
    text = [h.make_node("Gather", ["T", "input_ids"], ["g"]), h.make_node("Cast", ["attention_mask"], ["m0"], to=1),
            h.make_node("Unsqueeze", ["m0", "axis_last"], ["m"]), h.make_node("Mul", ["g", "m"], ["gm"]),
            h.make_node("ReduceSum", ["gm", "axis_1"], ["s"], keepdims=0), h.make_node("ReduceSum", ["m", "axis_1"], ["n"], keepdims=0),
            h.make_node("Div", ["s", "n"], ["pooled"]), *_normalize_nodes("pooled", "text_embedding")]

    def decoder(with_past: bool) -> tuple[list, dict]:
        nodes = [h.make_node("Shape", ["input_ids"], ["ids_shape"]),
                 h.make_node("Gather", ["ids_shape", "one"], ["seq"], axis=0),
                 h.make_node("Gather", ["A", "input_ids"], ["a"]),
                 h.make_node("Gather", ["E0", "input_ids"], ["e0"]), h.make_node("CumSum", ["e0", "one"], ["cum"])]
        if with_past:
            nodes += [h.make_node("Shape", ["past_key_values.0.key"], ["past_shape"]),
                      h.make_node("Gather", ["past_shape", "two"], ["start"], axis=0),
                      h.make_node("ReduceSum", ["past_key_values.0.key", "two_axes"], ["ps"], keepdims=0),
                      h.make_node("Reshape", ["ps", "flat_shape"], ["ps_flat"]),
                      h.make_node("Unsqueeze", ["ps_flat", "axis_1"], ["ps3"]), h.make_node("Add", ["cum", "ps3"], ["run"])]
        else:
            nodes += [h.make_node("Identity", ["zero"], ["start"]), h.make_node("Identity", ["cum"], ["run"])]
        nodes += [h.make_node("Add", ["start", "seq"], ["stop"]), h.make_node("Range", ["start", "stop", "one"], ["pos"]),
                  h.make_node("Gather", ["P", "pos"], ["p"]), h.make_node("MatMul", ["run", "W"], ["rw"]),
                  h.make_node("ReduceMean", ["cross.0.key"], ["cm"], axes=[1, 2, 3], keepdims=0),
                  h.make_node("Unsqueeze", ["cm", "cross_axes"], ["cm3"]), h.make_node("Mul", ["cm3", "u"], ["cu"]),
                  h.make_node("Add", ["a", "p"], ["ap"]), h.make_node("Add", ["ap", "rw"], ["apr"]),
                  h.make_node("Add", ["apr", "cu"], ["logits"])]
        init = {"A": model.A, "P": model.P, "W": model.W, "u": model.u, "one": scalar(1), "cross_axes": i64(1, 2),
                "kv_shape": i64(0, 0, H, D), "minus_one": np.array(-1, F32)}
        init.update({"two": scalar(2), "two_axes": i64(2), "flat_shape": i64(0, -1), "axis_1": i64(1)} if with_past
                    else {"zero": scalar(0)})
        for i in range(L):
            init[f"E{i}"] = model.E[i]
            nodes += [h.make_node("Gather", [f"E{i}", "input_ids"], [f"e{i}_new"]),
                      h.make_node("Reshape", [f"e{i}_new", "kv_shape"], [f"e{i}_4d"]),
                      h.make_node("Transpose", [f"e{i}_4d"], [f"k{i}_new"], perm=[0, 2, 1, 3]),
                      h.make_node("Mul", [f"k{i}_new", "minus_one"], [f"v{i}_new"])]
            for kind, new in (("key", f"k{i}_new"), ("value", f"v{i}_new")):
                if with_past:
                    nodes.append(h.make_node("Concat", [f"past_key_values.{i}.{kind}", new], [f"present.{i}.{kind}"], axis=2))
                else:
                    nodes.append(h.make_node("Identity", [new], [f"present.{i}.{kind}"]))
        return nodes, init

    graphs = {"image_encoder": (image, image_init),
              "text_encoder": (text, {"T": model.T, "axis_last": i64(-1), "axis_1": i64(1)}),
              "decoder_first": decoder(False), "decoder_with_past": decoder(True)}
    return {name: _save(nodes, name, *specs[name], init, directory / f"{name}.onnx")
            for name, (nodes, init) in graphs.items()}


def speech_onnx(path: Path, n_mels: int, vocab: int, blank_id: int = 0, seed: int = 0) -> Path:
    """features (B, n_mels, F), feature_lengths (B,) -> log_probs (B, ceil(F/2), vocab), output_lengths."""
    from onnx import helper as h

    rng = np.random.default_rng(seed)
    bias = np.zeros(vocab, F32)
    bias[blank_id] = 2.0  # mostly blanks, so transcripts stay short
    nodes = [h.make_node("Transpose", ["features"], ["ft"], perm=[0, 2, 1]),
             h.make_node("Slice", ["ft", "starts", "ends", "axes", "steps"], ["sub"]),
             h.make_node("MatMul", ["sub", "M"], ["mm"]), h.make_node("Add", ["mm", "bias"], ["z"]),
             h.make_node("LogSoftmax", ["z"], ["log_probs"], axis=-1),
             h.make_node("Add", ["feature_lengths", "one"], ["l1"]), h.make_node("Div", ["l1", "two"], ["output_lengths"])]
    init = {"M": rng.standard_normal((n_mels, vocab)).astype(F32), "bias": bias, "starts": i64(0),
            "ends": i64(2**62), "axes": i64(1), "steps": i64(2), "one": scalar(1), "two": scalar(2)}
    inputs = (TensorSpec("features", ("batch", n_mels, "frames"), "float32"), TensorSpec("feature_lengths", ("batch",), "int64"))
    outputs = (TensorSpec("log_probs", ("batch", "out_frames", vocab), "float32"),
               TensorSpec("output_lengths", ("batch",), "int64"))
    return _save(nodes, "speech_encoder", inputs, outputs, init, path)


def _component(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], files: Mapping[str, str]):
    from tinymm.bundle import Component, Variant
    from tinymm.bundle import TensorSpec as BundleSpec

    def convert(specs: Sequence[TensorSpec]) -> tuple:
        return tuple(BundleSpec(s.name, s.shape, s.dtype) for s in specs)

    return Component(name, convert(inputs), convert(outputs), {p: Variant(f) for p, f in files.items()})


def write_vlm_bundle(out_dir: Path, model: TinyVLM, tokenizer: Path, *, labels: Sequence[str] = (),
                     int8: bool = False, context_length: int | None = None) -> Path:
    """A real vision-language bundle of ``model`` (int8: an "int8" variant, a copy of the fp32 graph)."""
    from tinymm.bundle import BundleWriter, Preprocess
    from tinymm.preprocess.config import ImageConfig, TextConfig

    with BundleWriter(out_dir, overwrite=True) as writer:
        paths = vlm_onnx(model, writer.staging_dir / "onnx")
        components = {}
        for name, (inputs, outputs) in model.specs().items():
            files = {"fp32": f"onnx/{name}.onnx"}
            if int8:
                files["int8"] = f"onnx/{name}.int8.onnx"
                writer.add_file(files["int8"], paths[name])
            components[name] = _component(name, inputs, outputs, files)
        writer.add_file("tokenizer.model", tokenizer)
        text = TextConfig(tokenizer="tokenizer.model", context_length=context_length or model.max_length,
                          prompt_templates=VLM_TEMPLATES)
        image = ImageConfig(height=model.image_size, width=model.image_size)
        writer.write(name="tiny-vlm", family="vision-language", tasks=["caption", "ask", "classify"],
                     components=components, preprocess=Preprocess(image=image, text=text),
                     model=model.model_info(labels))
    return out_dir


def write_speech_bundle(out_dir: Path, tokenizer: Path, vocab: int, *, n_mels: int = 16, seed: int = 0,
                        model_extra: dict | None = None) -> Path:
    """A real speech bundle: the random ``speech_onnx`` graph, a tokenizer and a small log-mel contract;
    ``model_extra`` adds keys to the manifest's ``model`` object (e.g. ``grammar``)."""
    from tinymm.bundle import BundleWriter, Preprocess
    from tinymm.preprocess.config import AudioConfig, TextConfig

    with BundleWriter(out_dir, overwrite=True) as writer:
        speech_onnx(writer.staging_dir / "speech_encoder.onnx", n_mels, vocab, seed=seed)
        writer.add_file("speech.model", tokenizer)
        spec = _component("speech_encoder",
                          (TensorSpec("features", ("batch", n_mels, "frames"), "float32"),
                           TensorSpec("feature_lengths", ("batch",), "int64")),
                          (TensorSpec("log_probs", ("batch", "out_frames", vocab), "float32"),
                           TensorSpec("output_lengths", ("batch",), "int64")), {"fp32": "speech_encoder.onnx"})
        audio = AudioConfig(n_mels=n_mels, max_seconds=10.0)
        text = TextConfig(tokenizer="speech.model", context_length=256, add_bos=False)
        writer.write(name="tiny-speech", family="speech", tasks=["transcribe", "command"],
                     components={"speech_encoder": spec}, preprocess=Preprocess(audio=audio, text=text),
                     model={"blank_id": 0, "vocab_size": vocab, "subsampling_factor": 2, "max_frames": 1000,
                            **(model_extra or {})})
    return out_dir
