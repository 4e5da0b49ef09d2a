"""Grounding targets (which cells a question or caption phrase is about) and the supervised-attention loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

SIZE, PATCH = 64, 8  # the default student's image side and token cell, pixels
GRID = SIZE // PATCH


def _annotation() -> dict:
    """Three objects: a small red star (cell 1, 1), a large blue star (cell 6, 5), a STOP sign (cell 4, 0)."""
    return {"width": SIZE, "height": SIZE, "objects": [
        {"kind": "shape", "shape": "star", "color": "red", "size": "small", "center": [12.0, 10.0]},
        {"kind": "shape", "shape": "star", "color": "blue", "size": "large", "center": [44.0, 50.0]},
        {"kind": "sign", "text": "STOP", "center": [3.0, 33.0]},
    ]}


class WordTokenizer:
    """Stands in for the sentencepiece tokenizer: one id per whitespace word, two for "objects:"."""

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            ids += [len(word), 99] if word.endswith(":") else [len(word)]
        return ids


def test_object_cells_are_the_centre_cells():
    from train.vlm_grounding import object_cells

    assert object_cells(_annotation(), SIZE, PATCH).tolist() == [1 * GRID + 1, 6 * GRID + 5, 4 * GRID + 0]


@pytest.mark.parametrize("qa, objects", [
    ({"type": "color", "question": "what color is the star?"}, [0, 1]),
    ({"type": "shape", "question": "what shape is the blue object?"}, [1]),
    ({"type": "size", "question": "what size is the red star?"}, [0]),
    ({"type": "position", "question": "where is the blue star?"}, [1]),
    ({"type": "position", "question": "where is the sign?"}, [2]),
    ({"type": "sign", "question": "what does the sign say?"}, [2]),
    ({"type": "count", "question": "how many objects are there?"}, [0, 1, 2]),
    ({"type": "count_shape", "question": "how many stars are there?"}, [0, 1]),
    ({"type": "count_shape", "question": "how many crosses are there?"}, []),
    ({"type": "exist", "question": "is there a red star?"}, [0]),
    ({"type": "exist", "question": "is there an orange star?"}, []),
])
def test_question_objects_follow_the_question_forms(qa, objects):
    from train.vlm_grounding import question_objects

    assert question_objects(_annotation(), qa) == objects


def test_caption_targets_cover_the_words_after_each_phrase_start():
    from train.vlm_grounding import caption_targets, object_cells

    cells = object_cells(_annotation(), SIZE, PATCH)
    text = "two objects: a small red star above a sign that says STOP"
    rows = caption_targets(_annotation(), text, WordTokenizer(), cells, GRID * GRID)
    # tokens: two objects : a small red star above a sign that says STOP  (objects: is two tokens)
    assert rows.shape == (13, GRID * GRID)
    on = {t: sorted(np.flatnonzero(rows[t]).tolist()) for t in range(13) if rows[t].any()}
    every = sorted(cells.tolist())
    red_star, sign = [int(cells[0])], [int(cells[2])]
    assert on == {1: every, 2: every,  # "objects:" (the first word, "two", is said before choosing)
                  4: red_star, 5: red_star, 6: red_star,  # "small red star" of "a small red star"
                  7: red_star,  # "above": where the red star lies decides the relation
                  9: sign, 10: sign, 11: sign, 12: sign}  # "sign that says STOP"


def test_caption_targets_ground_position_and_relation_words_on_their_subject():
    from train.vlm_grounding import caption_targets, object_cells

    cells = object_cells(_annotation(), SIZE, PATCH)
    red_star, blue_star, sign = [int(cells[0])], [int(cells[1])], [int(cells[2])]
    text = "a red star is to the left of a large blue star and a sign reading STOP on the left"
    rows = caption_targets(_annotation(), text, WordTokenizer(), cells, GRID * GRID)
    on = {t: sorted(np.flatnonzero(rows[t]).tolist()) for t in range(len(text.split())) if rows[t].any()}
    assert on == {1: red_star, 2: red_star,  # "red star"
                  3: red_star, 4: red_star, 5: red_star, 6: red_star, 7: red_star,  # "is to the left of"
                  9: blue_star, 10: blue_star, 11: blue_star,  # "large blue star"
                  14: sign, 15: sign, 16: sign,  # "sign reading STOP"
                  17: sign, 18: sign, 19: sign}  # "on the left"


def test_caption_targets_are_empty_when_words_do_not_tokenize_alone():
    from train.vlm_grounding import caption_targets, object_cells

    class Merging(WordTokenizer):
        def encode(self, text):
            return [1] if " " in text else super().encode(text)

    rows = caption_targets(_annotation(), "a red star", Merging(), object_cells(_annotation(), SIZE, PATCH), GRID ** 2)
    assert rows.shape == (1, GRID ** 2) and not rows.any()


def test_head_log_attention_matches_the_model_cross_attention():
    import torch

    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_grounding import collect_cross_queries, grounding_keys, head_log_attention

    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 60, (2, 5))
    image_embeds = model.encode_image(pixels)
    cross = model.cross_kv(image_embeds)
    records, handles = collect_cross_queries(model.decoder)
    with torch.no_grad():
        model.decoder(ids, cross)
    for h in handles:
        h.remove()
    keys = grounding_keys(model.decoder, image_embeds, head=1)
    log_attn = head_log_attention(records, keys, model.decoder, head=1)  # (B, L, T, S)
    assert log_attn.shape == (2, model.config.dec_layers, 5, model.config.num_image_tokens)
    # Reference: the first block's cross-attention weights of head 1, recomputed from the block's inputs.
    block = model.decoder.blocks[0]
    with torch.no_grad():
        x = model.decoder.embed(ids, 0)
        q, k, v = block.self_attn.project(block.ln1(x))
        x = x + block.self_attn.attend(q, k, v, is_causal=True)
        query = block.cross_attn.q(block.ln2(x)).view(2, 5, 2, -1)[:, :, 1]  # (B, T, hs)
        weights = torch.softmax(query @ cross[0][:, 1].transpose(1, 2) / math.sqrt(query.shape[-1]), dim=-1)
    torch.testing.assert_close(log_attn[:, 0].exp(), weights, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        model.decoder(ids, cross)
    assert len(records) == model.config.dec_layers  # the hooks are gone


def test_grounding_loss_is_the_missing_mass_on_the_targets():
    import torch

    from train.vlm_grounding import grounding_loss

    attn = torch.full((1, 2, 3, 4), 0.25).log()  # uniform over 4 cells, 2 blocks, 3 positions
    targets = torch.zeros(1, 3, 4)
    targets[0, 1, [0, 2]] = 1.0  # position 1 is about cells 0 and 2
    assert float(grounding_loss(attn, targets)) == pytest.approx(-math.log(0.5))
    assert float(grounding_loss(attn, torch.zeros(1, 3, 4))) == 0.0
    # 2 x 2 pixel shuffle: 16 encoder cells become 4 memory tokens; cell 5 (row 1, col 1) is in token 0.
    shuffled = torch.zeros(1, 3, 16)
    shuffled[0, 0, 5] = 1.0
    sharp = torch.tensor([0.7, 0.1, 0.1, 0.1]).log().expand(1, 2, 3, 4)
    assert float(grounding_loss(sharp, shuffled, pixel_shuffle=2)) == pytest.approx(-math.log(0.7), rel=1e-5)


def test_grounding_loss_trains_the_decoder_not_the_image_encoder():
    import torch

    from train.models.vlm import VisionLanguageModel, VLMConfig
    from train.vlm_train import forward_multi_text
    from train.vlm_grounding import grounding_loss

    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny()).eval()  # eval: BatchNorm on 2 images would move the keys
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(3, 60, (2, 6))
    cells = model.config.grid_size ** 2  # tiny: 8 x 8 encoder cells, pixel shuffle 2 -> 4 x 4 memory tokens
    targets = torch.zeros(2, 6, cells)
    targets[0, 3:, 0] = targets[1, 3:, cells - 1] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = forward_multi_text(model, pixels, ids, torch.arange(2), with_grounding=True)
        loss = grounding_loss(out.ground_log_attention, targets, model.config.pixel_shuffle)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses) < 0.4 * losses[0]
    # The keys are detached: with one decoder block (whose queries see only text) nothing reaches the encoder.
    one_block = VisionLanguageModel(VLMConfig.tiny(dec_layers=1))
    out = forward_multi_text(one_block, pixels, ids, torch.arange(2), with_grounding=True)
    grounding_loss(out.ground_log_attention, targets, one_block.config.pixel_shuffle).backward()
    assert all(p.grad is None or not p.grad.any() for p in one_block.image_encoder.parameters())
    assert one_block.decoder.blocks[0].cross_attn.kv.weight.grad.any()
