"""onnxruntime's TensorRT provider as tinymm.load sets it up: optimization profiles from the bundle
contract, the per-bundle engine cache directory, and the flags that move or disable it.

Everything here is pure or runs on the CPU: the provider options are checked as the exact
strings onnxruntime parses, and a fake backend stands in for a machine with TensorRT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from tinymm.backends.base import BackendOptions, InputProfile
from tinymm.backends.ort_providers import TRT_CACHE_SUBDIR, tensorrt_provider_options, trt_profile_options
from tinymm.backends.trt_profiles import (
    BUNDLE_HASH_HEX_CHARS,
    bundle_cache_dirname,
    bundle_shape_limits,
    component_backend_options,
    component_trt_profiles,
    engine_cache_dir,
    engine_cache_root,
)
from tinymm.bundle import Component, FileEntry, Manifest, Preprocess, TensorSpec, Variant
from tinymm.bundle.names import default_bundle_names
from tinymm.errors import BackendError, BundleError
from tinymm.pipelines.load_options import LoadOptions
from tinymm.pipelines.sessions import open_sessions
from tinymm.preprocess.config import TextConfig

SHA_A, SHA_B = "a" * 64, "b" * 64
TOKENIZER = "tok.model"
CONTEXT = 16  # decoder tokens, prompt included
MAX_FRAMES = 200  # log-mel frames of the longest clip
MAX_BATCH = 8
LAYERS, HEADS, HEAD_DIM, IMAGE_TOKENS, N_MELS = 1, 2, 4, 3, 16


def _spec(name: str, *shape: int | str, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype)


def _component(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Component:
    return Component(name, tuple(inputs), tuple(outputs), {"fp32": Variant(f"{name}.onnx")})


def _manifest(name: str, family: str, components: list[Component], *, text: bool = True,
              model: dict | None = None, sha: str = SHA_A) -> Manifest:
    files = {f"{c.name}.onnx": FileEntry(sha, 10) for c in components}
    if text:
        files[TOKENIZER] = FileEntry(SHA_A, 10)
    return Manifest(
        name=name, family=family, tasks=("caption",) if family == "vision-language" else ("transcribe",),
        components={c.name: c for c in components}, files=files,
        preprocess=Preprocess(text=TextConfig(TOKENIZER, CONTEXT) if text else None), model=model or {},
    )


def _kv(prefix: str, length: int | str) -> list[TensorSpec]:
    """{prefix}.{i}.key|value of every layer: (batch, heads, length, head_dim)."""
    names = [f"{prefix}.{i}.{part}" for i in range(LAYERS) for part in ("key", "value")]
    return [_spec(name, "batch", HEADS, length, HEAD_DIM) for name in names]


def vlm_manifest(sha: str = SHA_A) -> Manifest:
    """The vision-language layout of export/LAYOUT.md with one decoder layer."""
    cross = _kv("cross", IMAGE_TOKENS)
    image = _component(
        "image_encoder", [_spec("pixel_values", "batch", 3, 8, 8)],
        [_spec("image_embeds", "batch", IMAGE_TOKENS, 8), *cross],
    )
    first = _component(
        "decoder_first", [_spec("input_ids", "batch", "seq", dtype="int64"), *cross],
        [_spec("logits", "batch", "seq", 11), *_kv("present", "seq")],
    )
    with_past = _component(
        "decoder_with_past",
        [_spec("input_ids", "batch", "new", dtype="int64"), *_kv("past_key_values", "past"), *cross],
        [_spec("logits", "batch", "new", 11), *_kv("present", "past+new")],
    )
    return _manifest("tiny-vlm", "vision-language", [image, first, with_past], model={"max_length": CONTEXT}, sha=sha)


def speech_manifest(model: dict | None = None) -> Manifest:
    encoder = _component(
        "speech_encoder",
        [_spec("features", "batch", N_MELS, "frames"), _spec("feature_lengths", "batch", dtype="int64")],
        [_spec("log_probs", "batch", "out_frames", 7), _spec("output_lengths", "batch", dtype="int64")],
    )
    return _manifest("tiny-speech", "speech", [encoder], model={"max_frames": MAX_FRAMES} if model is None else model)


def _trt_options(manifest: Manifest, component: str, cache_dir: Path | None) -> dict[str, str]:
    profiles = component_trt_profiles(manifest, component, bundle_shape_limits(manifest, MAX_BATCH))
    return tensorrt_provider_options(BackendOptions(provider="tensorrt", cache_dir=cache_dir, trt_profiles=profiles))


# --- optimization profiles as provider option strings ---------------------------------------------


def test_decoder_with_past_provider_options(tmp_path):
    trt = _trt_options(vlm_manifest(), "decoder_with_past", tmp_path)
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "False",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / TRT_CACHE_SUBDIR / "fp32"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / TRT_CACHE_SUBDIR / "timing"),
        # batch 1..8 (opt 1), new 1, past 1..16 (opt 8); inputs in name order, fixed sizes kept.
        "trt_profile_min_shapes": "cross.0.key:1x2x3x4,cross.0.value:1x2x3x4,input_ids:1x1,"
        "past_key_values.0.key:1x2x1x4,past_key_values.0.value:1x2x1x4",
        "trt_profile_opt_shapes": "cross.0.key:1x2x3x4,cross.0.value:1x2x3x4,input_ids:1x1,"
        "past_key_values.0.key:1x2x8x4,past_key_values.0.value:1x2x8x4",
        "trt_profile_max_shapes": "cross.0.key:8x2x3x4,cross.0.value:8x2x3x4,input_ids:8x1,"
        "past_key_values.0.key:8x2x16x4,past_key_values.0.value:8x2x16x4",
    }


def test_decoder_first_prompt_length_spans_the_context():
    trt = _trt_options(vlm_manifest(), "decoder_first", None)
    assert trt["trt_profile_min_shapes"].endswith(",input_ids:1x1")
    assert trt["trt_profile_opt_shapes"].endswith(",input_ids:1x8")
    assert trt["trt_profile_max_shapes"].endswith(",input_ids:8x16")
    assert trt["trt_engine_cache_enable"] == "False" and "trt_engine_cache_path" not in trt


def test_speech_encoder_provider_options():
    trt = _trt_options(speech_manifest(), "speech_encoder", None)
    assert {k: v for k, v in trt.items() if k.startswith("trt_profile_")} == {
        "trt_profile_min_shapes": "feature_lengths:1,features:1x16x1",
        "trt_profile_opt_shapes": "feature_lengths:1,features:1x16x100",
        "trt_profile_max_shapes": "feature_lengths:8,features:8x16x200",
    }


def test_inputs_of_fixed_sizes_are_left_out():
    mixed = _component("mixed", [_spec("table", 4, 3), _spec("x", "batch", 3)], [_spec("y", "batch", 3)])
    fixed = _component("fixed", [_spec("table", 4, 3)], [_spec("y", 4, 3)])
    manifest = _manifest("shapes", "example", [mixed, fixed], text=False)
    limits = bundle_shape_limits(manifest, MAX_BATCH)
    assert [p.name for p in component_trt_profiles(manifest, "mixed", limits)] == ["x"]
    assert trt_profile_options(component_trt_profiles(manifest, "mixed", limits)) == {
        "trt_profile_min_shapes": "x:1x3",
        "trt_profile_opt_shapes": "x:1x3",
        "trt_profile_max_shapes": "x:8x3",
    }
    # No dynamic input at all: no profile options (onnxruntime then builds the engine for the fixed shapes).
    assert component_trt_profiles(manifest, "fixed", limits) == ()
    trt = tensorrt_provider_options(BackendOptions(trt_profiles=()))
    assert not any(key.startswith("trt_profile_") for key in trt)


def test_limits_come_from_the_contract():
    limits = bundle_shape_limits(speech_manifest(), max_batch=4)
    assert limits.batch == (1, 1, 4)
    assert limits.dims["frames"] == (1, MAX_FRAMES // 2, MAX_FRAMES)
    assert limits.dims["seq"] == limits.dims["past"] == (1, CONTEXT // 2, CONTEXT)
    # No text contract: the decoder context falls back to model.max_length, else seq/past get no range.
    no_text = _manifest("no-text", "example", [_component("m", [_spec("x", "batch", "seq")], [_spec("y", "batch")])],
                        text=False, model={"max_length": 32})
    assert bundle_shape_limits(no_text).dims["seq"] == (1, 16, 32)
    unbounded = _manifest("unbounded", "example", list(no_text.components.values()), text=False)
    assert "seq" not in bundle_shape_limits(unbounded).dims
    with pytest.raises(BundleError, match=r"'m'.*'seq'.*context_length"):
        component_trt_profiles(unbounded, "m", bundle_shape_limits(unbounded))


def test_a_dimension_the_contract_does_not_bound_is_a_bundle_error():
    manifest = speech_manifest(model={})  # no model.max_frames
    with pytest.raises(BundleError, match=r"'speech_encoder'.*'frames'.*model.max_frames"):
        component_trt_profiles(manifest, "speech_encoder", bundle_shape_limits(manifest))
    with pytest.raises(BundleError, match=r"model.max_frames='long'.*positive integer"):
        bundle_shape_limits(speech_manifest(model={"max_frames": "long"}))


def test_a_bundle_that_declares_its_dynamic_dims_gets_exactly_those():
    # A Whisper-like decoder: its dimensions are not the contract's fixed names.
    decoder = _component("decoder", [_spec("tokens", "batch", "dec_len", dtype="int64"),
                                      _spec("encoder_states", "batch", "enc_len", 8)], [_spec("logits", "batch", 7)])
    manifest = _manifest("whisper-like", "speech", [decoder], model={"dynamic_dims": {"dec_len": 448, "enc_len": 1500}})
    limits = bundle_shape_limits(manifest, max_batch=4)
    assert limits.batch == (1, 1, 4) and limits.dims == {"dec_len": (1, 224, 448), "enc_len": (1, 750, 1500)}
    assert [p.max for p in component_trt_profiles(manifest, "decoder", limits)] == [(4, 1500, 8), (4, 448)]
    # The declared dims replace the fixed names (this manifest's text contract would have given seq and past).
    assert "seq" not in limits.dims
    # A declared batch bound lowers max_batch, never raises it.
    capped = _manifest("capped", "speech", [decoder], model={"dynamic_dims": {"batch": 2, "dec_len": 4, "enc_len": 4}})
    assert bundle_shape_limits(capped, max_batch=4).batch == (1, 1, 2)
    assert bundle_shape_limits(capped, max_batch=1).batch == (1, 1, 1)
    with pytest.raises(BundleError, match=r"'decoder'.*'enc_len'.*dynamic_dims"):
        missing = _manifest("missing", "speech", [decoder], model={"dynamic_dims": {"dec_len": 4}})
        component_trt_profiles(missing, "decoder", bundle_shape_limits(missing))


@pytest.mark.parametrize("declared, message", [
    ({}, "non-empty object"),
    ([["seq", 4]], "non-empty object"),
    ({"seq": 0}, r"dynamic_dims\['seq'\]=0.*positive integer"),
    ({"seq": True}, "positive integer"),
])
def test_bad_dynamic_dims_are_bundle_errors(declared, message):
    with pytest.raises(BundleError, match=message):
        bundle_shape_limits(speech_manifest(model={"dynamic_dims": declared}))


def test_input_names_onnxruntime_cannot_parse_are_refused():
    profile = InputProfile("a:b", (1,), (1,), (2,))
    with pytest.raises(BackendError, match=r"'a:b'.*separators"):
        tensorrt_provider_options(BackendOptions(trt_profiles=(profile,)))


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ("x:1x3", "sequence of InputProfile"),
        ([("x", (1,), (1,), (2,))], "not an InputProfile"),
        ([InputProfile("x", (2,), (1,), (3,))], "min <= opt <= max"),
        ([InputProfile("x", (1, 3), (1,), (2, 3))], "tuple of 2 sizes"),
        ([InputProfile("x", (0,), (1,), (2,))], "sizes >= 1"),
        ([InputProfile("x", (1,), (1,), (2,))] * 2, "two profiles"),
    ],
)
def test_backend_options_check_profiles(profiles, message):
    with pytest.raises(ValueError, match=message):
        BackendOptions(trt_profiles=profiles)


def test_backend_options_keep_profiles_as_a_tuple():
    profiles = [InputProfile("x", (1, 3), (2, 3), (4, 3))]
    assert BackendOptions(trt_profiles=profiles).trt_profiles == tuple(profiles)


# --- where engines are cached ---------------------------------------------------------------------


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert engine_cache_root({}) == tmp_path / "home" / ".cache" / "tinymm"
    assert engine_cache_root({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "tinymm"
    assert engine_cache_root({"XDG_CACHE_HOME": "relative/xdg"}) == tmp_path / "home" / ".cache" / "tinymm"
    both = {"TINYMM_CACHE_DIR": str(tmp_path / "engines"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert engine_cache_root(both) == tmp_path / "engines"
    assert engine_cache_root({"TINYMM_CACHE_DIR": "~/engines"}) == tmp_path / "home" / "engines"
    empty = {"TINYMM_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert engine_cache_root(empty) == tmp_path / "xdg" / "tinymm"
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "from-env"))
    assert engine_cache_root() == tmp_path / "from-env"  # os.environ by default


def test_each_bundle_content_gets_its_own_directory(tmp_path):
    manifest = vlm_manifest()
    env = {"TINYMM_CACHE_DIR": str(tmp_path / "env")}
    name = bundle_cache_dirname(manifest)
    assert name.startswith("tiny-vlm-") and len(name) == len("tiny-vlm-") + BUNDLE_HASH_HEX_CHARS
    assert engine_cache_dir(manifest, LoadOptions(), env) == tmp_path / "env" / name
    assert engine_cache_dir(manifest, LoadOptions(cache_dir=tmp_path / "over"), env) == tmp_path / "over" / name
    assert engine_cache_dir(manifest, LoadOptions(engine_cache=False), env) is None
    # Same name, other weights (another sha256 in the manifest): another directory.
    assert bundle_cache_dirname(vlm_manifest(sha=SHA_B)) != name
    assert bundle_cache_dirname(vlm_manifest()) == name  # deterministic
    assert not any(tmp_path.iterdir())  # resolving creates nothing


# --- LoadOptions and the command-line flags -------------------------------------------------------


def test_load_options_check_the_cache_fields(tmp_path):
    assert LoadOptions(cache_dir=str(tmp_path)).cache_dir == tmp_path
    with pytest.raises(ValueError, match="engine_cache=False; give one or the other"):
        LoadOptions(cache_dir=tmp_path, engine_cache=False)
    with pytest.raises(ValueError, match="engine_cache='no'"):
        LoadOptions(engine_cache="no")
    with pytest.raises(ValueError, match="cache_dir=3"):
        LoadOptions(cache_dir=3)
    with pytest.raises(ValueError, match="max_batch=0"):
        LoadOptions(max_batch=0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymm caption")
    LoadOptions.add_arguments(parser, default_bundle="scene-vlm")
    return parser


def test_cli_flags_parse(tmp_path):
    parser = _parser()
    default = LoadOptions.from_args(parser.parse_args([]))
    assert (default.cache_dir, default.engine_cache) == (None, True)
    moved = LoadOptions.from_args(parser.parse_args(["--provider", "tensorrt", "--cache-dir", str(tmp_path)]))
    assert (moved.provider, moved.cache_dir, moved.engine_cache) == ("tensorrt", tmp_path, True)
    off = LoadOptions.from_args(parser.parse_args(["--no-engine-cache"]))
    assert (off.cache_dir, off.engine_cache) == (None, False)


@pytest.mark.parametrize("argv", [["--cache-dir", "x", "--no-engine-cache"], ["--cache-dir", " "]])
def test_cli_flags_refuse_contradictions(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        _parser().parse_args(argv)
    assert excinfo.value.code == 2
    assert "--cache-dir" in capsys.readouterr().err


# --- open_sessions: what each component is loaded with ----------------------------------------------


class RecordingBackend:
    """A backend that offers `providers` and records the options each model is loaded with."""

    name = "recording"

    def __init__(self, providers: tuple[str, ...]) -> None:
        self.providers = providers
        self.loaded: dict[str, BackendOptions] = {}

    def available_providers(self) -> tuple[str, ...]:
        return self.providers

    def load(self, model_path: Path, options: BackendOptions) -> SimpleNamespace:
        self.loaded[model_path.name.split(".")[0]] = options
        return SimpleNamespace(provider=options.provider)


def _open(monkeypatch, manifest: Manifest, providers: tuple[str, ...], options: LoadOptions) -> RecordingBackend:
    backend = RecordingBackend(providers)
    monkeypatch.setattr("tinymm.backends.base.get_backend", lambda name: backend)
    bundle = SimpleNamespace(manifest=manifest, checked_component_path=lambda name, precision: Path(f"{name}.onnx"))
    open_sessions(bundle, ("image_encoder", "decoder_first"), ("decoder_with_past", "text_encoder"), options)
    return backend


def test_tensorrt_sessions_get_their_profile_and_the_bundle_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "cache"))
    manifest = vlm_manifest()
    backend = _open(monkeypatch, manifest, ("tensorrt", "cuda", "cpu"), LoadOptions(max_batch=MAX_BATCH))
    assert sorted(backend.loaded) == ["decoder_first", "decoder_with_past", "image_encoder"]
    limits = bundle_shape_limits(manifest, MAX_BATCH)
    for name, options in backend.loaded.items():
        assert options.provider == "auto"  # auto resolves to TensorRT here
        assert options.cache_dir == tmp_path / "cache" / bundle_cache_dirname(manifest)
        assert options.trt_profiles == component_trt_profiles(manifest, name, limits)
    assert not (tmp_path / "cache").exists()  # created by the backend when it makes a TensorRT session
    off = _open(monkeypatch, manifest, ("tensorrt", "cpu"), LoadOptions(engine_cache=False))
    assert all(o.cache_dir is None and o.trt_profiles for o in off.loaded.values())


@pytest.mark.parametrize(("providers", "provider"), [(("cuda", "cpu"), "auto"), (("tensorrt", "cuda", "cpu"), "cpu")])
def test_other_providers_get_no_cache_and_no_profiles(tmp_path, monkeypatch, providers, provider):
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "cache"))
    backend = _open(monkeypatch, vlm_manifest(), providers, LoadOptions(provider=provider))
    assert all(o.cache_dir is None and o.trt_profiles == () for o in backend.loaded.values())


def test_a_cpu_load_never_touches_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="loading a bundle needs onnxruntime")
    if "speech-commands" not in default_bundle_names():
        pytest.skip("the default speech bundle is not built in this checkout (scripts/make_default_bundles.py)")
    import onnxruntime

    import tinymm

    for variable, path in (("TINYMM_CACHE_DIR", "cache"), ("XDG_CACHE_HOME", "xdg"), ("HOME", "home")):
        monkeypatch.setenv(variable, str(tmp_path / path))
    # "auto" runs on the CPU only where this onnxruntime has no GPU provider.
    gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(onnxruntime.get_available_providers())
    for provider in ("cpu",) if gpu else ("cpu", "auto"):
        speech = tinymm.load("speech-commands", provider=provider, threads=1, verify_checksums=False)
        assert speech.encoder.provider == "cpu"
    assert not any(tmp_path.iterdir())


def test_load_refuses_a_cache_dir_with_the_cache_off(tmp_path):
    import tinymm

    with pytest.raises(ValueError, match="give one or the other"):
        tinymm.load("speech-commands", cache_dir=tmp_path, engine_cache=False)
    assert not any(tmp_path.iterdir())


def test_a_partial_tensorrt_graph_gets_a_hint():
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime")
    from tinymm.backends.onnxruntime import _load_error

    profiles = (InputProfile("x", (1,), (1,), (2,)),)
    failure = RuntimeError("Following input(s) has no associated shape profiles provided: inner_tensor")
    hinted = _load_error(Path("m.onnx"), "tensorrt", BackendOptions(trt_profiles=profiles), failure)
    assert "inner_tensor" in str(hinted) and "provider='cuda'" in str(hinted)
    plain = _load_error(Path("m.onnx"), "tensorrt", BackendOptions(), failure)
    assert "provider='cuda'" not in str(plain)


@pytest.mark.parametrize(("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False),
                                                         ("int8", False, True)])
def test_tensorrt_sessions_get_the_flag_of_their_variant(tmp_path, monkeypatch, precision, fp16, int8):
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "cache"))
    chosen = {"image_encoder": precision, "decoder_first": "fp32"}
    options = component_backend_options(vlm_manifest(), chosen, LoadOptions(), "tensorrt")
    assert (options["image_encoder"].trt_fp16, options["image_encoder"].trt_int8) == (fp16, int8)
    assert (options["decoder_first"].trt_fp16, options["decoder_first"].trt_int8) == (False, False)
