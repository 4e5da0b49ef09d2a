"""CLIP and SigLIP: tiny random checkpoints of the real architectures -> bundles -> the runtime, against transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import tinymm
from tinymm.cli import main as tinymm_main
from tinymm.errors import BundleError, InputError

sys.path.insert(0, str(Path(__file__).parent))
from tiny_contrastive import make_clip, make_siglip  # noqa: E402

LABELS = ["a photo of a cat", "a red circle", "two blue squares on a white background", "a dog"]
MAX_ABS = 1e-4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """{family: (checkpoint dir, bundle dir)}: CLIP through the export CLI, SigLIP through the API."""
    from export.families import HFExportRequest, export_source
    from export.hf_cli import main as export_main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("contrastive")
    clip, siglip = make_clip(root / "clip-src"), make_siglip(root / "siglip-src")
    code = export_main([str(clip), "--out", str(root / "clip"), "--precision", "fp32,fp16,int8", "--no-progress"])
    assert code == 0
    export_source(HFExportRequest(source=siglip, out=root / "siglip", precisions=("fp32", "fp16", "int8"),
                                  progress=False))
    return {"clip": (clip, root / "clip"), "siglip": (siglip, root / "siglip")}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A PNG scene (BGR on disk as OpenCV writes it)."""
    h, w = 70, 100
    image = np.empty((h, w, 3), np.uint8)
    image[:] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    cv2.circle(image, (60, 35), 20, (40, 40, 220), -1)
    cv2.rectangle(image, (5, 5), (30, 40), (200, 150, 30), -1)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), image)
    return path


def _reference(source: Path, family: str):
    from transformers import CLIPImageProcessorPil, CLIPModel, SiglipImageProcessorPil, SiglipModel

    model_class, processor_class = (CLIPModel, CLIPImageProcessorPil) if family == "clip" else \
        (SiglipModel, SiglipImageProcessorPil)
    return model_class.from_pretrained(str(source)).eval(), processor_class.from_pretrained(str(source))


def _reference_ids(source: Path, texts: list[str], family: str) -> dict[str, torch.Tensor]:
    """Ids as the checkpoint's tokenizer.json makes them (its own post-processor), padded as the family is used."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    rows = [tokenizer.encode(t).ids for t in texts]
    pad = tokenizer.token_to_id(json.loads((source / "tokenizer_config.json").read_text())["pad_token"])
    length = max(map(len, rows)) if family == "clip" else 12
    ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask} if family == "clip" else {"input_ids": ids}


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_bundle_describes_itself(bundles, family):
    bundle = tinymm.load(bundles[family][1], precision="fp32").bundle
    manifest = bundle.manifest
    assert manifest.family == "vision-language" and manifest.architecture == family
    assert set(manifest.components) == {"image_encoder", "text_encoder"}
    assert all(set(c.variants) == {"fp32", "fp16", "int8"} for c in manifest.components.values())
    assert manifest.model["logit_scale"] == pytest.approx(20.0 if family == "clip" else 10.0, rel=1e-6)
    assert manifest.model["logit_bias"] == pytest.approx(0.0 if family == "clip" else -2.0)
    text, image = manifest.preprocess.text, manifest.preprocess.image
    assert text.kind == "hf-tokenizers" and (bundle.root / text.tokenizer).is_file()
    if family == "clip":
        assert (text.add_bos, text.add_eos, text.pad_id == text.eos_id) == (True, True, True)
        assert (image.resize, image.shortest_edge, image.interpolation) == ("shortest_edge", 32, "pil_bicubic")
        assert [s.name for s in manifest.components["text_encoder"].inputs] == ["input_ids", "attention_mask"]
    else:
        assert (text.add_bos, text.add_eos, text.context_length) == (False, True, 12)
        assert (image.resize, image.mean, image.std) == ("stretch", (0.5,) * 3, (0.5,) * 3)
        assert [s.name for s in manifest.components["text_encoder"].inputs] == ["input_ids"]
    gate = manifest.provenance["export"]["parity"]["int8_gate"]["components"]
    for component, entry in gate.items():  # the int8 agreement is recorded, and what it decided
        assert 0 <= entry["agreement"] <= 100 and entry["min_cosine"] > 0.9, (component, entry)
        assert entry["shipped"] == ("int8" in manifest.components[component].variants)
    print(family, {c: (e["verdict"], e["agreement"], round(e["min_cosine"], 5)) for c, e in gate.items()})


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_embeddings_and_probabilities_match_transformers(bundles, family, image_file):
    from PIL import Image

    source, path = bundles[family]
    model, processor = _reference(source, family)
    pipeline = tinymm.load(path, precision="fp32")
    rgb = np.asarray(Image.open(image_file).convert("RGB"))
    pixels = processor(images=[rgb], return_tensors="pt")["pixel_values"]
    ours = pipeline.preprocessor(str(image_file))
    assert np.abs(ours - pixels.numpy()).max() <= 1e-5  # the same pixel_values from the same file
    feeds = _reference_ids(source, LABELS, family)
    np.testing.assert_array_equal(pipeline.token_ids(LABELS)[0], feeds["input_ids"].numpy())
    with torch.no_grad():
        image_ref = model.get_image_features(pixel_values=pixels).pooler_output
        text_ref = model.get_text_features(**feeds).pooler_output
        logits = model(pixel_values=pixels, **feeds).logits_per_image  # (1, L)
    image_ref = (image_ref / image_ref.norm(dim=-1, keepdim=True)).numpy()
    text_ref = (text_ref / text_ref.norm(dim=-1, keepdim=True)).numpy()
    image_err = np.abs(pipeline.embed_image(str(image_file)) - image_ref).max()
    text_err = np.abs(pipeline.embed_text(LABELS) - text_ref).max()
    expected = torch.softmax(logits, -1) if family == "clip" else torch.sigmoid(logits)
    result = pipeline.classify(str(image_file), LABELS, top_k=len(LABELS))
    got = dict(zip(result.labels, result.probabilities))
    prob_err = max(abs(got[label] - float(expected[0, i])) for i, label in enumerate(LABELS))
    print(f"{family}: image {image_err:.2e}, text {text_err:.2e}, probabilities {prob_err:.2e}")
    assert image_err <= MAX_ABS and text_err <= MAX_ABS and prob_err <= MAX_ABS
    assert list(result.scores) == sorted(result.scores, reverse=True)
    if family == "clip":
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_batches_inputs_and_errors(bundles, family, image_file):
    pipeline = tinymm.load(bundles[family][1], precision="fp32")
    bgr = cv2.imread(str(image_file))
    one = pipeline.embed_image(bgr)
    assert one.shape[0] == 1 and np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)
    batch = pipeline.embed_image([str(image_file), image_file.read_bytes(), bgr[:, :, ::-1].copy()], rgb=False)
    assert batch.shape[0] == 3 and np.allclose(batch[0], batch[1], atol=1e-6)
    assert np.allclose(pipeline.embed_image(bgr[:, :, ::-1].copy(), rgb=True), one, atol=1e-6)
    results = pipeline.classify([bgr, bgr], LABELS[:2], top_k=1, domain_threshold=5.0)
    assert len(results) == 2 and results[0].labels == results[1].labels and not results[0].rejected
    assert pipeline.domain_threshold == float("inf")
    with pytest.raises(BundleError, match="no decoder"):
        pipeline.caption(bgr)
    with pytest.raises(BundleError, match="no decoder"):
        pipeline.ask(bgr, "what is it?")
    with pytest.raises(InputError, match="ships no label set"):
        pipeline.classify(bgr)
    with pytest.raises(InputError, match="empty"):
        pipeline.embed_text(["  "])
    with pytest.raises(InputError, match="more than once"):
        pipeline.classify(bgr, ["a cat", "a cat"])
    with pytest.raises(InputError, match="top_k"):
        pipeline.classify(bgr, LABELS, top_k=0)


def test_int8_bundles_classify_like_fp32(bundles, image_file):
    for family in ("clip", "siglip"):
        fp32 = tinymm.load(bundles[family][1], precision="fp32").classify(str(image_file), LABELS, top_k=1)
        int8 = tinymm.load(bundles[family][1], precision="int8").classify(str(image_file), LABELS, top_k=1)
        assert abs(int8.scores[0] - fp32.scores[0]) < 0.05, family


def test_cli_info_verify_and_classify(bundles, image_file, capsys):
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    for family in ("clip", "siglip"):
        path = str(bundles[family][1])
        assert tinymm_main(["info", path]) == 0
        assert tinymm_main(["verify", path]) == 0
        capsys.readouterr()
        assert tinymm_main(["classify", str(image_file), "--bundle", path, "--labels", "a cat,a dog", "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["ok"] and {x["label"] for x in payload["results"][0]["labels"]} == {"a cat", "a dog"}
        assert tinymm_main(["classify", str(image_file), "--bundle", path, "--labels", "a cat,a dog",
                            "--domain-threshold", "3"]) == 0
        assert "a cat" in capsys.readouterr().out
        assert load_with(path, LoadOptions(), family="vision-language").architecture == family


def test_cli_embed_gives_the_api_embeddings_and_caption_is_refused(bundles, image_file, capsys):
    import tinymm

    for family in ("clip", "siglip"):
        path = str(bundles[family][1])
        pipeline = tinymm.load(path, precision="fp32")
        capsys.readouterr()
        assert tinymm_main(["embed", str(image_file), "--bundle", path, "--precision", "fp32", "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["kind"] == "image" and payload["dim"] == pipeline.embed_image(str(image_file)).shape[1]
        np.testing.assert_allclose(payload["results"][0]["embedding"], pipeline.embed_image(str(image_file))[0],
                                   atol=1e-6)
        assert tinymm_main(["embed", "--text", "a cat", "a dog", "--bundle", path, "--precision", "fp32",
                            "--json"]) == 0
        rows = [r["embedding"] for r in json.loads(capsys.readouterr().out)["results"]]
        np.testing.assert_allclose(rows, pipeline.embed_text(["a cat", "a dog"]), atol=1e-6)
        assert tinymm_main(["caption", str(image_file), "--bundle", path]) == 4  # no decoder: a bundle error
        assert "no decoder" in capsys.readouterr().err


def test_the_runtime_path_imports_no_torch(bundles, image_file):
    code = ("import sys, tinymm\n"
            f"p = tinymm.load({str(bundles['clip'][1])!r})\n"
            f"r = p.classify({str(image_file)!r}, ['a cat', 'a dog'])\n"
            f"tinymm.load({str(bundles['siglip'][1])!r}).embed_text('a dog')\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'PIL', 'export'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=120)
