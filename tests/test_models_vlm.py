"""VisionLanguageModel: sizes, KV-cache parity, causality, contrastive head, ONNX export."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'tinymm[train]')")

from tinymm.errors import InputError  # noqa: E402
from train.models import VisionLanguageModel, VLMConfig, param_count  # noqa: E402

pytestmark = pytest.mark.requires_torch

STUDENT_MAX_PARAMS = 2_200_000  # fp32 + int8 bundles of both families within 20 MB
TEACHER_MIN_RATIO = 4.0
PARITY_ATOL = 1e-5
ONNX_ATOL = 1e-4
AUX_CLASSES = (7, 9, 3)  # e.g. shape + none, colour + none, size + none


def _model(**overrides) -> VisionLanguageModel:
    torch.manual_seed(0)
    return VisionLanguageModel(VLMConfig.tiny(**overrides)).eval()


def _pixels(cfg: VLMConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)


def _ids(cfg: VLMConfig, batch: int, length: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=g)


def test_student_and_teacher_sizes():
    student = param_count(VisionLanguageModel(VLMConfig.student()))
    teacher = param_count(VisionLanguageModel(VLMConfig.teacher()))
    assert 1_000_000 < student <= STUDENT_MAX_PARAMS, student
    assert teacher >= TEACHER_MIN_RATIO * student, (teacher, student)


def test_student_token_grid():
    cfg = VLMConfig.student()
    assert cfg.patch_size == 8 and cfg.grid_size == 8 and cfg.num_image_tokens == 64
    assert VLMConfig.student(image_size=96).num_image_tokens == 144
    assert VLMConfig.teacher().grid_size == cfg.grid_size  # one dataset's attribute targets fit both


def test_forward_shapes_hidden_states_and_aux_heads():
    model = _model(aux_attribute_classes=AUX_CLASSES)
    cfg = model.config
    out = model.forward_features(_pixels(cfg), _ids(cfg, 2, 7))
    g, n_img = cfg.grid_size, cfg.num_image_tokens
    assert out.logits.shape == (2, 7, cfg.vocab_size)
    assert out.image_tokens.shape == (2, g * g, cfg.enc_dim)
    assert out.image_embeds.shape == (2, n_img, cfg.dec_dim)
    assert len(out.encoder_hidden) == cfg.enc_layers and out.encoder_hidden[0].shape == (2, g * g, cfg.enc_dim)
    assert len(out.decoder_hidden) == cfg.dec_layers and out.decoder_hidden[-1].shape == (2, 7, cfg.dec_dim)
    assert [a.shape for a in out.aux_logits] == [(2, g, g, c) for c in AUX_CLASSES]
    assert torch.equal(model(_pixels(cfg), _ids(cfg, 2, 7)), out.logits)


def test_cross_kv_computed_once_is_what_forward_uses():
    model = _model()
    cfg = model.config
    pixels = _pixels(cfg)
    seen = []
    hooks = [
        block.cross_attn.register_forward_hook(lambda mod, args, out: seen.append(args[1:3]))
        for block in model.decoder.blocks
    ]
    with torch.no_grad():
        model(pixels, _ids(cfg, 2, 5))
        cross = model.cross_kv(model.encode_image(pixels))
    for hook in hooks:
        hook.remove()
    assert len(cross) == 2 * cfg.dec_layers and len(seen) == cfg.dec_layers
    hs = cfg.dec_dim // cfg.dec_heads
    for i, (k, v) in enumerate(seen):
        assert cross[2 * i].shape == (2, cfg.dec_heads, cfg.num_image_tokens, hs)
        assert torch.equal(cross[2 * i], k) and torch.equal(cross[2 * i + 1], v)


def test_greedy_decoding_with_kv_cache_matches_full_forward():
    model = _model()
    cfg = model.config
    pixels, prompt = _pixels(cfg), _ids(cfg, 2, 3)
    steps = 8
    with torch.no_grad():
        cross = model.cross_kv(model.encode_image(pixels))
        logits, past = model.decode_first(prompt, cross)
        assert len(past) == 2 * cfg.dec_layers and past[0].shape[2] == 3
        cached_logits, tokens = [logits[:, -1]], []
        for _ in range(steps):
            token = cached_logits[-1].argmax(-1)
            tokens.append(token)
            logits, past = model.decode_with_past(token[:, None], past, cross)
            cached_logits.append(logits[:, -1])
        assert past[0].shape[2] == 3 + steps

        seq = prompt
        for i in range(steps + 1):
            full = model(pixels, seq)[:, -1]
            torch.testing.assert_close(cached_logits[i], full, atol=PARITY_ATOL, rtol=0)
            if i < steps:
                assert torch.equal(full.argmax(-1), tokens[i])
                seq = torch.cat([seq, tokens[i][:, None]], dim=1)
        generated = model.generate(pixels, prompt, max_new_tokens=steps)
    assert torch.equal(generated, torch.stack(tokens, dim=1))


def test_decode_with_past_accepts_several_new_tokens():
    model = _model()
    cfg = model.config
    pixels, ids = _pixels(cfg), _ids(cfg, 2, 9)
    with torch.no_grad():
        cross = model.cross_kv(model.encode_image(pixels))
        _, past = model.decode_first(ids[:, :4], cross)
        chunk, _ = model.decode_with_past(ids[:, 4:], past, cross)
        full = model(pixels, ids)
    torch.testing.assert_close(chunk, full[:, 4:], atol=PARITY_ATOL, rtol=0)


def test_decoder_is_causal():
    model = _model()
    cfg = model.config
    pixels, ids = _pixels(cfg), _ids(cfg, 2, 10)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(pixels, ids), model(pixels, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


def test_contrastive_embeddings_are_normalised_and_ignore_padding():
    model = _model()
    cfg = model.config
    ids = _ids(cfg, 3, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    with torch.no_grad():
        img = model.embed_image(_pixels(cfg, batch=4))
        txt = model.embed_text(ids, mask)
        padded_other = ids.clone()
        padded_other[1, 4:] = 5  # different tokens under the padding must not matter
        txt_other = model.embed_text(padded_other, mask)
        alone = model.embed_text(ids[1:2, :4], mask[1:2, :4])
    assert img.shape == (4, cfg.embed_dim) and txt.shape == (3, cfg.embed_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt_other, txt, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, txt[1:2], atol=1e-6, rtol=0)
    assert model.contrastive_logits(img, txt).shape == (4, 3)


def test_image_pool_max_and_mean_follow_the_config():
    model = _model()
    assert model.config.image_pool == "max"  # what the presets train with
    pixels = _pixels(model.config, batch=3)
    with torch.no_grad():
        tokens, _ = model.image_encoder(pixels)
        by_max = model.embed_image(pixels)
        mean_model = _model(image_pool="mean")
        by_mean = mean_model.embed_image(pixels)
    torch.testing.assert_close(by_max, torch.nn.functional.normalize(model.image_proj(tokens.amax(1)), dim=-1))
    torch.testing.assert_close(by_mean, torch.nn.functional.normalize(mean_model.image_proj(tokens.mean(1)), dim=-1))
    with pytest.raises(ValueError, match="image_pool"):
        VLMConfig.tiny(image_pool="attention")


def test_memory_positions_are_added_to_the_decoder_memory():
    model = _model()
    cfg = model.config
    assert cfg.memory_positions and model.projector.positions.shape == (cfg.num_image_tokens, cfg.dec_dim)
    pixels = _pixels(cfg, batch=2)
    with torch.no_grad():
        before = model.encode_image(pixels)
        model.projector.positions.add_(1.0)
        after = model.encode_image(pixels)
    torch.testing.assert_close(after - before, torch.ones_like(before), atol=1e-5, rtol=0)
    assert _model(memory_positions=False).projector.positions is None


def test_configs_saved_before_the_pool_and_memory_options_load_as_trained():
    old = dataclasses.asdict(VLMConfig.tiny())
    del old["image_pool"], old["memory_positions"], old["image_pool_hidden"]
    cfg = VLMConfig.from_dict(old)
    assert cfg.image_pool == "mean" and cfg.memory_positions is False and cfg.image_pool_hidden == 0


def test_logit_scale_starts_at_clip_value_and_is_clamped():
    model = _model()
    torch.testing.assert_close(model.logit_scale_value(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    assert model.logit_scale_value().item() == pytest.approx(100.0)


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="enc_dim"):
        VLMConfig.tiny(enc_dim=30)
    with pytest.raises(ValueError, match="image_size"):
        VLMConfig.tiny(image_size=36)
    assert VLMConfig.from_dict(dataclasses.asdict(VLMConfig.tiny())) == VLMConfig.tiny()
    with pytest.raises(ValueError, match="unknown"):
        VLMConfig.from_dict({"image_sise": 64})
    model = _model()
    cfg = model.config
    with pytest.raises(InputError, match=r"\(B, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 64, 64), _ids(cfg, 1, 3))
    with pytest.raises(InputError, match="vocabulary"):
        model(_pixels(cfg, batch=1), torch.tensor([[1, cfg.vocab_size]]))
    with pytest.raises(InputError, match="max_text_len"):
        model(_pixels(cfg, batch=1), _ids(cfg, 1, cfg.max_text_len + 1))


def test_training_step_reduces_caption_loss():
    model = _model()
    model.train()
    cfg = model.config
    pixels, ids = _pixels(cfg, batch=4), _ids(cfg, 4, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(pixels, ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


class _Piece(torch.nn.Module):
    """Exposes one model method as forward, as torch.onnx.export needs a Module."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.eval()  # the exporter restores this mode on the model afterwards

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


def _export(module, args, path, input_names, output_names, dynamic_axes):
    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.requires_torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_encode_image_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    model = _model()
    cfg = model.config
    session = _export(_Piece(model, "encode_image"), (_pixels(cfg),), tmp_path / "enc.onnx",
                      ["pixel_values"], ["image_embeds"], {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
    pixels = _pixels(cfg, batch=3, seed=7)  # another batch size than the example
    (got,) = session.run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        want = model.encode_image(pixels).numpy()
    assert got.shape == want.shape and abs(got - want).max() <= ONNX_ATOL


@pytest.mark.requires_torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decode_with_past_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    model = _model()
    cfg = model.config
    n = cfg.dec_layers
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    cross_names = [f"cross_attn.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    axes = {"input_ids": {0: "batch"}, "logits": {0: "batch"}}
    axes |= {name: {0: "batch", 2: "past_len"} for name in past_names}
    axes |= {name: {0: "batch", 2: "past_len_plus_1"} for name in present_names}
    axes |= {name: {0: "batch"} for name in cross_names}

    def inputs(batch, prompt_len, seed):
        with torch.no_grad():
            cross = model.cross_kv(model.encode_image(_pixels(cfg, batch, seed)))
            _, past = model.decode_first(_ids(cfg, batch, prompt_len, seed), cross)
        return _ids(cfg, batch, 1, seed + 1), past, cross

    session = _export(_Piece(model, "decode_with_past"), inputs(2, 3, 0), tmp_path / "dec.onnx",
                      ["input_ids", *past_names, *cross_names], ["logits", *present_names], axes)
    ids, past, cross = inputs(1, 6, 5)  # other batch size and past length than the example
    feeds = {"input_ids": ids.numpy()}
    feeds |= {name: t.numpy() for name, t in zip(past_names + cross_names, past + cross)}
    got = session.run(None, feeds)
    with torch.no_grad():
        logits, present = model.decode_with_past(ids, past, cross)
    want = [logits.numpy()] + [t.numpy() for t in present]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max(abs(g - w).max() for g, w in zip(got, want)) <= ONNX_ATOL


def test_a_pool_mlp_widens_the_image_projection():
    model = _model(image_pool_hidden=24)
    assert model.image_pool_mlp is not None and model.image_proj.in_features == 24
    with torch.no_grad():
        embedding = model.embed_image(_pixels(model.config, batch=2))
    assert embedding.shape == (2, model.config.embed_dim)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    assert _model().image_pool_mlp is None
    with pytest.raises(ValueError, match="image_pool_hidden"):
        VLMConfig.tiny(image_pool_hidden=-1)
