"""SmolVLM (Idefics3) from a Hugging Face directory to a tinymm bundle, on a tiny random checkpoint.

Parity: the runtime's tiles and prompt ids against transformers' Pillow image processor and its
image-token expansion; the runtime's greedy tokens (with and without the KV cache) against
transformers' ``generate``; then the bundle through ``tinymm info`` / ``verify`` / ``caption`` /
``ask`` and the API.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from export.families import HFExportRequest, export_source, find_family  # noqa: E402
from tests.tiny_smolvlm import build_source, hf_inputs  # noqa: E402
from tinymm.cli import main  # noqa: E402
from tinymm.families.smolvlm import SmolVLMPipeline  # noqa: E402
from tinymm.pipelines.results import AnswerResult, CaptionResult  # noqa: E402

STEPS = 10  # generated tokens per greedy comparison
SIZES = ((50, 70), (70, 50), (96, 96), (20, 150), (200, 40), (31, 33), (10, 10), (64, 33), (120, 121), (45, 200))
QUESTIONS = ("What color is the star?", "How many shapes are there?")


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB uint8 image with smooth gradients and noise (every resize filter tap matters)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("smolvlm")
    source = build_source(root / "source")
    result = export_source(HFExportRequest(source=source.directory, out=root / "bundle", precisions=("fp32", "int8"),
                                           progress=False, max_metric_drop=50.0, command="test"))
    yield source, result
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(exported):
    import tinymm

    return tinymm.load(str(exported[1].bundle.root), precision="fp32")


@pytest.fixture(scope="module")
def model(exported):
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration.from_pretrained(exported[0].directory, attn_implementation="eager").eval()


def _prompt(pipeline: SmolVLMPipeline, i: int) -> tuple[str, str | None]:
    task = "caption" if i % 2 == 0 else "ask"
    question = None if task == "caption" else QUESTIONS[(i // 2) % len(QUESTIONS)]
    return task, question


def test_detected_as_smolvlm(exported):
    assert find_family(exported[0].directory).NAME == "smolvlm"


@pytest.mark.parametrize("index", range(len(SIZES)))
def test_preprocessing_matches_transformers_processor(exported, pipeline, index):
    h, w = SIZES[index]
    image = _image(h, w, index)
    task, question = _prompt(pipeline, index)
    pixels, ids = pipeline.preprocess(image, task, question, rgb=True)
    template = pipeline.templates[task].replace("{question}", question or "")
    ref_pixels, ref_ids = hf_inputs(exported[0].directory, image, template)
    assert ids.tolist() == ref_ids[0].tolist()
    assert pixels.shape == ref_pixels.shape[1:]
    assert np.abs(pixels - ref_pixels[0]).max() <= 1e-6


def _hf_generate(model, image: np.ndarray, template: str, directory, eos: int) -> list[int]:
    pixels, ids = hf_inputs(directory, image, template)
    ids_t = torch.from_numpy(ids)
    with torch.no_grad():
        out = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                             pixel_values=torch.from_numpy(pixels), max_new_tokens=STEPS, do_sample=False,
                             num_beams=1, eos_token_id=eos, pad_token_id=eos)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("cache", [True, False])
def test_greedy_tokens_match_transformers_generate(exported, pipeline, model, cache):
    from tinymm.decoding import DecodingOptions

    source = exported[0]
    runtime = pipeline if cache else SmolVLMPipeline(
        vision_encoder=pipeline.vision_encoder, embed_tokens=pipeline.embed_tokens,
        decoder_first=pipeline.decoder_first, decoder_with_past=None, tiles=pipeline.tiles,
        tokenizer=pipeline.tokenizer, model_info=pipeline.bundle.manifest.model)
    options = DecodingOptions(max_new_tokens=STEPS)
    pairs = 0
    for i in range(20):
        image = _image(*SIZES[i % len(SIZES)], seed=100 + i)
        task, question = _prompt(runtime, i)
        template = runtime.templates[task].replace("{question}", question or "")
        expected = _hf_generate(model, image, template, source.directory, source.eos_id)
        result = runtime.caption(image, decoding=options, rgb=True) if task == "caption" else \
            runtime.ask(image, question, decoding=options, rgb=True)
        got = [*result.token_ids, *([source.eos_id] if result.finished else [])]
        assert got == expected, (i, task)
        pairs += 1
    assert pairs >= 20


def test_int8_agreement_is_reported(exported):
    bundle = exported[1].bundle
    gate = bundle.manifest.provenance["export"]["parity"]["int8_gate"]
    assert 0.0 <= gate["agreement"] <= 100.0 and gate["tokens"] > 0
    shipped = all("int8" in bundle.manifest.components[c].variants for c in ("decoder_first", "decoder_with_past"))
    assert gate["shipped"] == shipped
    vision = bundle.manifest.provenance["export"]["parity"]["int8_gate_vision"]
    assert 0.0 <= vision["agreement"] <= 100.0 and vision["tokens"] > 0
    assert vision["shipped"] == ("int8" in bundle.manifest.components["vision_encoder"].variants)
    assert vision["shipped"]  # the tests' gate (max_metric_drop 50) lets a static int8 ViT through
    greedy = bundle.manifest.provenance["export"]["parity"]["greedy"]
    assert greedy["identical"] == greedy["samples"] >= 4


def test_info_and_verify(exported, capsys):
    root = str(exported[1].bundle.root)
    assert main(["info", root]) == 0
    assert "smolvlm" in capsys.readouterr().out
    assert main(["verify", root]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert main(["verify", root, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True


def test_caption_and_ask_from_the_cli(exported, tmp_path, capsys):
    import cv2

    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), _image(60, 90, 7)[:, :, ::-1])
    root = str(exported[1].bundle.root)
    assert main(["caption", str(path), "--bundle", root, "--json", "--max-new-tokens", "5"]) == 0
    caption = json.loads(capsys.readouterr().out)["results"][0]
    assert caption["rejected"] is False and len(caption["token_ids"]) <= 5
    assert main(["ask", str(path), "what is it?", "--bundle", root, "--json", "--max-new-tokens", "5"]) == 0
    assert "what is it?" in capsys.readouterr().out
    assert main(["caption", str(path), "--bundle", root, "--domain-threshold", "3"]) == 0


def test_caption_and_ask_from_the_api(pipeline):
    from tinymm.decoding import DecodingOptions

    image = _image(40, 70, 3)[:, :, ::-1].copy()  # BGR, as cameras give
    assert pipeline.domain_threshold == math.inf
    caption = pipeline.caption(image, decoding=DecodingOptions(max_new_tokens=4), domain_threshold=None)
    assert isinstance(caption, CaptionResult) and caption.rejected is False
    answers = pipeline.ask([image, image], "what is it?", decoding=DecodingOptions(max_new_tokens=4, beam_size=2),
                           domain_threshold=2.0)
    assert all(isinstance(a, AnswerResult) and not a.rejected for a in answers)
    assert answers[0].token_ids == answers[1].token_ids


def test_int8_bundle_loads_and_answers(exported):
    import tinymm

    vlm = tinymm.load(str(exported[1].bundle.root), precision="int8")
    assert isinstance(vlm.caption(_image(30, 30, 1)).text, str)
