"""The vision-language recipe: tokenizer, training examples, and the whole recipe on a tiny preset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

TINY_SIZE = 32  # pixels: the tiny preset's image side
TINY_SCENES = 32
TINY_STEPS = 10  # per stage; the loop logs at step 1 and every 10 steps
EVAL_SCENES = 4
HEAD_STEPS = 15  # zero-shot head steps per model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The whole recipe on the tiny preset: 32 scenes, 10 steps per stage, 4 scenes per eval split."""
    from train.recipes.vlm import add_arguments, run

    out = tmp_path_factory.mktemp("vlm")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(out), "--preset", "tiny", "--size", str(TINY_SIZE), "--scenes",
                              str(TINY_SCENES), "--eval-scenes", str(EVAL_SCENES), "--max-steps", str(TINY_STEPS),
                              "--budget-minutes", "10", "--batch-size", "4", "--texts-per-image", "2",
                              "--workers", "1", "--pseudo-scenes", "4", "--questions-per-type", "2",
                              "--head-steps", str(HEAD_STEPS), "--threads", "1", "--no-progress"])
    assert run(args) == 0
    return out


@pytest.fixture(scope="module")
def scenes_and_tokenizer(tiny_run):
    from train.data.scene_dataset import SceneDataset
    from train.recipes.vlm import MAX_TEXT_LEN
    from train.vlm_tokenizer import load_tokenizer

    return SceneDataset(tiny_run, "train"), load_tokenizer(tiny_run / "tokenizer", MAX_TEXT_LEN["tiny"])


def test_zero_shot_heads_are_tuned_evaluated_and_leave_the_decoder_alone(tiny_run):
    import torch

    from train.checkpoint import load_checkpoint
    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.recipes.vlm import HEAD_DIR, STAGE_DIRS, evaluated_checkpoint

    results = json.loads((tiny_run / "results.json").read_text())
    for name, stage in STAGE_DIRS.items():
        assert evaluated_checkpoint(tiny_run / stage) == tiny_run / stage / HEAD_DIR
        head = results["models"][name]["zero_shot_head"]
        assert head["steps"] == HEAD_STEPS and 0.0 <= head["check_top1"]["after"] <= 1.0
        assert results["models"][name]["config"]["image_pool_hidden"] > 0
        assert results["models"][name]["test"]["weights_sha256"]
    final, _, _ = load_checkpoint(tiny_run / "distill" / "final", VisionLanguageModel, VLMConfig)
    tuned, _, _ = load_checkpoint(tiny_run / "distill" / HEAD_DIR, VisionLanguageModel, VLMConfig)
    pixels = torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(tuned(pixels, ids), final(pixels, ids), atol=0, rtol=0)


def test_recipe_writes_every_stage_and_result(tiny_run):
    for path in ("scenes/meta.json", "scenes/heldout/annotations.jsonl", "tokenizer/tokenizer.model",
                 "teacher/final/model.safetensors", "distill/final/model.safetensors",
                 "distill/pseudo_captions.json", "scratch/final/model.safetensors", "results.json", "results.md"):
        assert (tiny_run / path).is_file(), path
    results = json.loads((tiny_run / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "distilled", "scratch"}
    for name, entry in results["models"].items():
        assert entry["params"] > 0
        assert entry["training"]["steps"] == TINY_STEPS
        for split in ("test", "heldout"):
            metrics = entry[split]
            for key in ("caption_fact_accuracy", "bleu4", "vqa_overall", "zero_shot_top1"):
                assert 0.0 <= metrics[key] <= 1.0, (name, split, key)
            assert metrics["scenes"] == EVAL_SCENES
            assert "overall" in metrics["vqa"] and len(metrics["vqa"]) > 2
            for kind, counts in metrics["caption_facts_by_kind"].items():
                assert kind in ("object", "count", "position", "relation"), (name, split, kind)
                assert 0 <= counts["false"] <= counts["stated"], (name, split, kind)
    models = results["models"]
    assert models["teacher"]["params"] > models["distilled"]["params"] == models["scratch"]["params"]
    assert "| distilled (test) |" in (tiny_run / "results.md").read_text()


def test_losses_fall_and_distillation_terms_are_logged(tiny_run):
    for stage in ("teacher", "distill", "scratch"):
        rows = [json.loads(line) for line in (tiny_run / stage / "train_log.jsonl").read_text().splitlines()]
        assert rows[0]["step"] == 1 and rows[-1]["step"] == 10
        assert rows[-1]["lm"] < rows[0]["lm"], stage
        assert rows[-1]["total"] < rows[0]["total"], stage
    distill = json.loads((tiny_run / "distill" / "train_log.jsonl").read_text().splitlines()[-1])
    assert {"kd_logit", "hidden", "affinity"} <= set(distill)


def test_teacher_terms_anneal_to_zero_over_the_distillation_stage(tiny_run):
    from train.loop import teacher_anneal_scale
    from train.vlm_train import TEACHER_TERMS, LossWeights

    weights = LossWeights()  # annealed by default
    assert [teacher_anneal_scale(weights.teacher_anneal, p) for p in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert teacher_anneal_scale(LossWeights(teacher_anneal=False).teacher_anneal, 0.9) == 1.0
    rows = [json.loads(line) for line in (tiny_run / "distill" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["teacher_scale"] == 1.0 and rows[-1]["teacher_scale"] == pytest.approx(1.0 - rows[-1]["progress"])
    for row in rows:  # the logged total is the weighted sum with the teacher's terms scaled
        plain = sum(getattr(weights, k) * row[k] for k in ("lm", "contrastive", "aux", "ground"))
        taught = sum(getattr(weights, k) * row[k] for k in TEACHER_TERMS)
        assert row["total"] == pytest.approx(plain + row["teacher_scale"] * taught, abs=2e-3)
    scratch = json.loads((tiny_run / "scratch" / "train_log.jsonl").read_text().splitlines()[-1])
    assert scratch["teacher_scale"] == 0.0 and "kd_logit" not in scratch


def test_committed_teacher_and_init_student_continue_both_students(tiny_run, tmp_path):
    import dataclasses
    import shutil

    from tinymm.errors import InputError
    from train.recipes.vlm import adopt_teacher, add_arguments, new_student, run

    committed = tmp_path / "teacher"  # laid out as train/teachers/vlm: the checkpoint and tokenizer/
    shutil.copytree(tiny_run / "teacher" / "final", committed)
    shutil.copytree(tiny_run / "tokenizer", committed / "tokenizer")
    out = tmp_path / "continued"
    out.mkdir()
    (out / "scenes").symlink_to(tiny_run / "scenes")
    init = tiny_run / "distill" / "final"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(out), "--preset", "tiny", "--size", str(TINY_SIZE), "--max-steps", "3",
                              "--budget-minutes", "10", "--batch-size", "4", "--texts-per-image", "2",
                              "--pseudo-scenes", "4", "--questions-per-type", "2", "--head-steps", "0",
                              "--threads", "1", "--no-progress", "--teacher", str(committed),
                              "--init-student", str(init)])
    assert run(args) == 0
    assert not (out / "teacher" / "train_log.jsonl").exists()  # no teacher stage
    assert (out / "teacher" / "final" / "model.safetensors").read_bytes() == \
        (committed / "model.safetensors").read_bytes()
    (committed / "tokenizer" / "tokenizer.model").write_bytes(b"another tokenizer")
    with pytest.raises(InputError, match="differs"):
        adopt_teacher(committed, out)
    with pytest.raises(InputError, match="train/teachers/vlm"):
        adopt_teacher(tmp_path / "nowhere", out)
    fresh_lm = json.loads((tiny_run / "distill" / "train_log.jsonl").read_text().splitlines()[0])["lm"]
    for stage in ("distill", "scratch"):
        first = json.loads((out / stage / "train_log.jsonl").read_text().splitlines()[0])
        assert first["lm"] < fresh_lm, stage  # step 1 is scored with the trained weights, not a fresh model's
    results = json.loads((out / "results.json").read_text())
    assert results["init_student"] == str(init) and results["teacher"] == str(committed)
    assert results["stage_shares"]["distill"] == 0.8
    assert results["models"]["distilled"]["training"]["steps"] == 3

    from train.checkpoint import load_checkpoint
    from train.models.vlm import VisionLanguageModel, VLMConfig

    _, config, _ = load_checkpoint(init, VisionLanguageModel, VLMConfig)
    with pytest.raises(InputError, match="vocab_size"):
        new_student(dataclasses.replace(config, vocab_size=config.vocab_size + 1), init)
    with pytest.raises(InputError, match="config.json is missing"):
        new_student(config, tmp_path)


def test_init_student_gains_zero_memory_positions_and_computes_as_before(tiny_run, tmp_path):
    import dataclasses

    import torch

    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.recipes.vlm import new_student

    trained, config, _ = load_checkpoint(tiny_run / "distill" / "final", VisionLanguageModel, VLMConfig)
    old = VisionLanguageModel(dataclasses.replace(config, memory_positions=False))  # as students before them
    old.load_state_dict({k: v for k, v in trained.state_dict().items() if k != "projector.positions"})
    save_checkpoint(tmp_path / "old", old, old.config, step=1)
    grown = new_student(config, tmp_path / "old")
    assert grown.config.memory_positions and not grown.projector.positions.detach().any()
    pixels = torch.rand(2, 3, config.image_size, config.image_size)
    ids = torch.randint(0, config.vocab_size, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(pixels, ids), old.eval()(pixels, ids))
    assert not new_student(old.config, tmp_path / "old").config.memory_positions  # a run without them adds none


def test_memory_positions_learn_at_their_own_lr_scale():
    import torch

    from train.loop import set_lr
    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_train import _param_groups

    model = VisionLanguageModel(VLMConfig.tiny(memory_positions=True))
    groups = _param_groups([model], weight_decay=0.05, memory_position_lr_scale=20.0)
    assert [len(g["params"]) for g in groups][2] == 1 and groups[2]["params"][0] is model.projector.positions
    assert groups[2]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_lr(optimizer, 1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 2e-2])
    without = VisionLanguageModel(VLMConfig.tiny(memory_positions=False))
    assert len(_param_groups([without], 0.05, 20.0)) == 2  # no memory positions, no group of their own


def test_rerun_skips_finished_stages(tiny_run):
    from train.recipes.vlm import add_arguments, run

    stamps = {p: p.stat().st_mtime_ns for p in tiny_run.glob("*/final/model.safetensors")}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tiny_run), "--preset", "tiny", "--size", str(TINY_SIZE),
                              "--max-steps", str(TINY_STEPS), "--no-progress", "--threads", "1"])
    assert run(args) == 0
    assert {p: p.stat().st_mtime_ns for p in tiny_run.glob("*/final/model.safetensors")} == stamps


def test_tokenizer_has_the_prompt_templates_and_fixed_ids(scenes_and_tokenizer):
    _, tokenizer = scenes_and_tokenizer
    cfg = tokenizer.config
    assert (cfg.pad_id, cfg.bos_id, cfg.eos_id, cfg.unk_id) == (0, 1, 2, 3)
    assert set(tokenizer.tasks) == {"caption", "ask", "classify"}
    assert tokenizer.vocab_size <= 128
    prompt = tokenizer.encode_prompt("ask", question="what color is the circle?")
    assert prompt[0] == cfg.bos_id
    assert tokenizer.decode(prompt) == "question: what color is the circle? answer:"
    assert tokenizer.decode(tokenizer.encode("a photo of a red circle")) == "a photo of a red circle"


def test_examples_use_the_runtime_preprocessor_and_align_targets(scenes_and_tokenizer):
    from tinymm.preprocess.image import ImagePreprocessor
    from train.vlm_data import AUX_ATTRIBUTES, IGNORE_INDEX, TASKS, VLMSceneDataset, image_config

    scenes, tokenizer = scenes_and_tokenizer
    ds = VLMSceneDataset(scenes, tokenizer, image_size=TINY_SIZE, patch_size=4)
    image, annotation = scenes[0]
    ex = ds.example(0, np.random.default_rng(0))
    expected = ImagePreprocessor(image_config(TINY_SIZE))(image, rgb=True)[0]
    assert ex["pixel_values"].shape == (3, TINY_SIZE, TINY_SIZE) and ex["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(ex["pixel_values"], expected)
    assert ex["pixel_values"].min() < 0  # normalised with mean/std 0.5, not just scaled to [0, 1]
    # Teacher forcing: labels are input_ids shifted by one; the prompt is not a target.
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids.shape == labels.shape and ids[0] == tokenizer.config.bos_id
    targets = labels != IGNORE_INDEX
    np.testing.assert_array_equal(ids[1:][targets[:-1]], labels[:-1][targets[:-1]])
    assert labels[-1] == tokenizer.config.eos_id and targets.sum() >= 2
    assert TASKS[ex["task"]] in TASKS
    assert ex["aux"].shape == (len(AUX_ATTRIBUTES), TINY_SIZE // 4, TINY_SIZE // 4)
    assert ex["label_targets"].sum() == len(annotation["labels"])
    assert ex["label_targets"][ex["label_index"]] == 1.0


def test_aux_targets_put_each_object_in_its_cell():
    from train.vlm_data import AUX_ATTRIBUTES, IGNORE_INDEX, aux_targets

    annotation = {"width": 64, "height": 64, "objects": [
        {"kind": "shape", "center": [10.0, 50.0], "shape": "star", "color": "blue", "size": "large"},
        {"kind": "sign", "center": [40.0, 8.0], "text": "GO"},
    ]}
    aux = aux_targets(annotation, image_size=32, patch_size=4)  # centres scale by 0.5: cells (6, 1), (1, 5)
    shape, color, size, sign = (AUX_ATTRIBUTES[k] for k in ("shape", "color", "size", "sign"))
    assert aux[:, 6, 1].tolist() == [shape.index("star"), color.index("blue"), size.index("large"), 0]
    assert aux[:, 1, 5].tolist() == [shape.index("sign"), IGNORE_INDEX, IGNORE_INDEX, sign.index("GO")]
    assert (aux != 0).sum() == 7  # every other cell is "none"


def test_collate_pads_and_maps_texts_to_images(scenes_and_tokenizer):
    from train.vlm_data import IGNORE_INDEX, VLMSceneDataset, collate

    scenes, tokenizer = scenes_and_tokenizer
    ds = VLMSceneDataset(scenes, tokenizer, image_size=TINY_SIZE, patch_size=4)
    rng = np.random.default_rng(1)
    batch = collate([ds.example(i, rng, texts=3) for i in range(4)], tokenizer.config.pad_id)
    n, t = batch["input_ids"].shape
    assert batch["pixel_values"].shape == (4, 3, TINY_SIZE, TINY_SIZE)
    assert n == 12 and batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    pad = ~batch["attention_mask"]
    assert (batch["input_ids"][pad] == tokenizer.config.pad_id).all()
    assert (batch["labels"][pad] == IGNORE_INDEX).all()


def test_scene_without_captions_trains_on_its_questions(scenes_and_tokenizer):
    from train.vlm_data import TASKS, TaskMix, VLMSceneDataset

    scenes, tokenizer = scenes_and_tokenizer
    ds = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, 8, mix=TaskMix(caption=1.0, vqa=0.0))
    annotation = {**scenes.annotations[0], "captions": []}
    rng = np.random.default_rng(0)
    assert {ds.text_example(annotation, 0, rng)[0] for _ in range(5)} == {TASKS.index("vqa")}


def test_question_types_are_drawn_uniformly(scenes_and_tokenizer):
    from train.vlm_data import TaskMix, VLMSceneDataset

    scenes, tokenizer = scenes_and_tokenizer
    qa = [{"type": "exist", "question": f"q{i}", "answer": "yes"} for i in range(9)]
    qa.append({"type": "sign", "question": "what does the sign say?", "answer": "go"})
    rng = np.random.default_rng(0)
    balanced = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, 8, mix=TaskMix(type_emphasis=()))._draw_question
    emphasised = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, 8)._draw_question  # sign counts twice by default
    plain = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, 8, mix=TaskMix(balance_question_types=False))._draw_question
    share = np.mean([balanced(qa, rng)["type"] == "sign" for _ in range(400)])
    assert 0.4 < share < 0.6
    assert 0.58 < np.mean([emphasised(qa, rng)["type"] == "sign" for _ in range(400)]) < 0.75
    assert np.mean([plain(qa, rng)["type"] == "sign" for _ in range(400)]) < 0.2


def test_curriculum_starts_with_one_object_scenes():
    from train.vlm_data import curriculum_pool

    counts = np.array([1, 2, 3, 4, 1, 4])
    assert curriculum_pool(counts, 0.0, 0.2).tolist() == [0, 4]
    assert curriculum_pool(counts, 0.1, 0.2).tolist() == [0, 1, 4]
    assert curriculum_pool(counts, 0.5, 0.2).tolist() == list(range(6))


def test_stage_options_are_validated_once():
    from train.vlm_train import LossWeights, StageOptions

    with pytest.raises(ValueError, match="budget_minutes or max_steps"):
        StageOptions(budget_minutes=None)
    with pytest.raises(ValueError, match="texts_per_image"):
        StageOptions(budget_minutes=1.0, texts_per_image=0)
    with pytest.raises(ValueError, match="kd_logit"):
        LossWeights(kd_logit=-1.0)


def test_cached_image_decoding_matches_model_generate():
    import torch

    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_eval import greedy_decode

    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny()).eval()
    pixels = torch.randn(3, 3, 32, 32)
    prompt = torch.randint(4, 64, (3, 5))
    expected = model.generate(pixels, prompt, max_new_tokens=6, eos_id=2)
    got = greedy_decode(model, model.encode_image(pixels), prompt, max_new_tokens=6, eos_id=2)
    assert torch.equal(got, expected)


def test_multi_text_forward_matches_one_text_per_image():
    import torch

    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_train import forward_multi_text

    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny(aux_attribute_classes=(3, 2))).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 64, (3, 7))
    image_index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        out = forward_multi_text(model, pixels, ids, image_index)
        reference = model.forward_features(pixels[image_index], ids)
    torch.testing.assert_close(out.logits, reference.logits)
    torch.testing.assert_close(out.image_embedding[image_index], reference.image_embedding)
    assert [a.shape for a in out.aux_logits] == [(2, 8, 8, 3), (2, 8, 8, 2)]


def test_length_bucketed_decoding_matches_one_padded_pass():
    import torch

    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_train import forward_multi_text

    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 64, (5, 9))
    mask = torch.arange(9)[None, :] < torch.tensor([3, 9, 5, 2, 7])[:, None]  # (5, 9) right padding
    image_index = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        padded = forward_multi_text(model, pixels, ids, image_index)
        bucketed = forward_multi_text(model, pixels, ids, image_index, mask)
    torch.testing.assert_close(bucketed.logits[mask], padded.logits[mask])
    torch.testing.assert_close(bucketed.decoder_last[mask], padded.decoder_last[mask])
    assert bucketed.logits.shape == padded.logits.shape


def test_aux_loss_weights_object_cells_over_empty_ones():
    import torch

    from train.vlm_data import IGNORE_INDEX
    from train.vlm_train import aux_loss

    aux = torch.zeros(1, 2, 2, 2, dtype=torch.long)  # (B, A, G, G): 4 cells, 2 attributes
    aux[0, :, 0, 0] = torch.tensor([1, 2])  # one object in cell (0, 0)
    aux[0, 1, 1, 1] = IGNORE_INDEX  # an attribute that does not apply: no loss, but the cell is occupied
    wrong_on_object = torch.zeros(1, 2, 2, 3)
    wrong_on_object[..., 0] = 5.0  # predicts "none" everywhere, also on the object
    right = wrong_on_object.clone()
    right[0, 0, 0] = torch.tensor([0.0, 5.0, 5.0])
    logits = (wrong_on_object, wrong_on_object)
    full = aux_loss(logits, aux, empty_weight=1.0)
    weighted = aux_loss(logits, aux, empty_weight=0.1)
    assert weighted > 2 * full  # the missed object dominates once empty cells are down-weighted
    assert aux_loss((right, right), aux, empty_weight=0.1) < 0.2 * weighted
    # empty_weight 1 and no ignored targets: the plain mean over cells
    plain = torch.nn.functional.cross_entropy(wrong_on_object.flatten(0, 2), aux[:, 0].flatten())
    torch.testing.assert_close(aux_loss((wrong_on_object,), aux[:, :1], empty_weight=1.0), plain)


def test_same_seed_gives_same_images_per_step_with_or_without_pseudo_captions(scenes_and_tokenizer, tmp_path):
    from train.loop import setup_device
    from train.models.vlm import VisionLanguageModel
    from train.recipes.vlm import model_configs
    from train.vlm_data import VLMSceneDataset
    from train.vlm_train import LossWeights, StageOptions, train_stage

    scenes, tokenizer = scenes_and_tokenizer
    config = model_configs("tiny", TINY_SIZE, tokenizer.vocab_size)["student"]
    seen = []
    pseudo = {i: ["a sign"] for i in range(len(scenes))}  # draws extra random numbers for captions
    for run, captions in (("distill", pseudo), ("scratch", None)):
        ds = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, config.patch_size, pseudo_captions=captions)
        calls = []
        original = ds.example
        ds.example = lambda i, rng, texts, calls=calls, original=original: calls.append(i) or original(i, rng, texts)
        options = StageOptions(budget_minutes=None, max_steps=3, batch_size=4, texts_per_image=2)
        train_stage(run, VisionLanguageModel(config), ds, tmp_path / run, options, LossWeights(),
                    setup_device("cpu", "fp32"), show_progress=False)
        seen.append(calls)
    assert seen[0] == seen[1] and len(seen[0]) == 12


def test_stage_resumes_from_its_latest_checkpoint(scenes_and_tokenizer, tmp_path):
    import shutil

    import torch

    from train.checkpoint import latest_checkpoint
    from train.loop import setup_device
    from train.models.vlm import VisionLanguageModel
    from train.recipes.vlm import model_configs
    from train.vlm_data import VLMSceneDataset
    from train.vlm_train import FINAL_DIR, LossWeights, StageOptions, train_stage

    scenes, tokenizer = scenes_and_tokenizer
    config = model_configs("tiny", TINY_SIZE, tokenizer.vocab_size)["student"]
    ds = VLMSceneDataset(scenes, tokenizer, TINY_SIZE, config.patch_size)
    setup = setup_device("cpu")

    def stage(steps: int) -> Path:
        torch.manual_seed(0)
        options = StageOptions(budget_minutes=None, max_steps=steps, batch_size=2, texts_per_image=1,
                               checkpoint_minutes=1e-6)  # a resumable checkpoint after every step
        return train_stage("t", VisionLanguageModel(config), ds, tmp_path, options, LossWeights(), setup,
                           show_progress=False)

    stage(3)
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert len(list(tmp_path.glob("step_*"))) == 1  # older step checkpoints are pruned
    shutil.rmtree(tmp_path / FINAL_DIR)
    stage(5)
    assert json.loads((tmp_path / "stage.json").read_text())["steps"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 4]  # the second run logged its first step, 4, after resuming at 3


def test_answer_cap_holds_every_answer_word_even_spelled_piece_by_piece():
    from train.data.scene_language import NUMBER_WORDS
    from train.data.scene_world import COLORS, POSITIONS, SHAPES, SIGN_TEXTS, SIZES, UNCLEAR_POSITION
    from train.recipes.vlm import MAX_TEXT_LEN
    from train.vlm_eval import ANSWER_MAX_TOKENS
    from train.vlm_tokenizer import load_tokenizer

    words = [*COLORS, *SHAPES, *SIZES, *POSITIONS, UNCLEAR_POSITION, *NUMBER_WORDS, "yes", "no",
             *(t.lower() for t in SIGN_TEXTS)]
    shipped = load_tokenizer(Path(__file__).parents[1] / "train" / "students" / "vlm", MAX_TEXT_LEN["default"])
    for word in words:
        assert len(word) + 2 <= ANSWER_MAX_TOKENS, word  # a word-start piece, one per letter, EOS
        assert len(shipped.encode(word)) + 1 <= ANSWER_MAX_TOKENS, word
