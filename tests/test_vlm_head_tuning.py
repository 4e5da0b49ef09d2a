"""Zero-shot head tuning: only the contrastive parts learn, on locked image tokens, and the loss falls."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'tinymm[train]')")

from train.data.scene_dataset import SceneDataset, build_specs, write_dataset  # noqa: E402
from train.data.scene_language import all_labels  # noqa: E402
from train.models.vlm import VisionLanguageModel, VLMConfig  # noqa: E402
from train.vlm_data import TaskMix, VLMSceneDataset, label_token_batch  # noqa: E402
from train.vlm_head_tuning import (TUNED_MODULES, HeadTuningOptions, tune_zero_shot_head,  # noqa: E402
                                   with_pool_mlp, zero_shot_top1_on)
from train.vlm_tokenizer import load_tokenizer, scene_corpus, train_tokenizer  # noqa: E402
from train.vlm_train import clip_label_loss  # noqa: E402

pytestmark = pytest.mark.requires_torch
SIZE = 32  # the tiny preset's image side
CONTEXT = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> VLMSceneDataset:
    root = tmp_path_factory.mktemp("scenes")
    write_dataset(root, build_specs({"train": 48}, size=SIZE, seed=0), workers=1, progress=False)
    scenes = SceneDataset(root, "train")
    train_tokenizer(scene_corpus(scenes.annotations, all_labels()), root / "tokenizer", 128, CONTEXT)
    tokenizer = load_tokenizer(root / "tokenizer", CONTEXT)
    return VLMSceneDataset(scenes, tokenizer, SIZE, VLMConfig.tiny().patch_size, TaskMix(), None, 0)


def _model(dataset: VLMSceneDataset, **overrides) -> VisionLanguageModel:
    torch.manual_seed(0)
    return VisionLanguageModel(VLMConfig.tiny(vocab_size=dataset.tokenizer.vocab_size, max_text_len=CONTEXT,
                                              **overrides))


def _clip_loss(model: VisionLanguageModel, dataset: VLMSceneDataset) -> float:
    ids, mask = label_token_batch(dataset.tokenizer, dataset.labels)
    pixels = torch.from_numpy(np.stack([dataset.pixels(i) for i in range(len(dataset))]))
    targets = torch.from_numpy(np.stack([dataset.label_targets(a) for a in dataset.scenes.annotations]))
    with torch.no_grad():
        return float(clip_label_loss(model, model.embed_image(pixels), model.embed_text(ids, mask), targets))


def test_with_pool_mlp_keeps_every_trained_weight_but_the_image_projection(dataset):
    model = _model(dataset)
    widened = with_pool_mlp(model, hidden=24, seed=0)
    assert widened.config.image_pool_hidden == 24 and widened.image_proj.in_features == 24
    assert with_pool_mlp(_model(dataset, image_pool="mean"), hidden=24, seed=0).config.image_pool == "max"
    old, new = model.state_dict(), widened.state_dict()
    for key, value in old.items():
        if not key.startswith("image_proj."):
            assert torch.equal(new[key], value), key


def test_tuning_lowers_the_contrastive_loss_and_changes_only_the_head(dataset):
    model = _model(dataset)
    options = HeadTuningOptions(steps=60, scenes=48, batch_size=16, hidden=32)
    tuned, summary = tune_zero_shot_head(model, dataset, options, torch.device("cpu"), show_progress=False,
                                         check=dataset, check_scenes=16)
    start = with_pool_mlp(model, options.hidden, options.seed).eval()  # eval: no BatchNorm statistics updates
    assert summary["loss_last"] < summary["loss_first"]
    assert _clip_loss(tuned, dataset) < _clip_loss(start, dataset)
    assert set(summary["check_top1"]) == {"scenes", "before", "after"} and summary["check_top1"]["scenes"] == 16
    changed = {k.split(".")[0] for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])}
    assert changed and changed <= set(TUNED_MODULES) | {"logit_scale"}
    assert all(p.requires_grad for p in tuned.parameters())  # unlocked again for whoever trains it next
    assert 0.0 <= zero_shot_top1_on(tuned, dataset, 8, torch.device("cpu")) <= 1.0


@pytest.mark.parametrize(("field", "value"), [("steps", -1), ("scenes", 0), ("hidden", 0), ("lr", 0.0)])
def test_bad_options_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        HeadTuningOptions(**{field: value})
