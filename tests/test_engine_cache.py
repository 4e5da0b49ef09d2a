"""The TensorRT engine cache: keys, fingerprints, rebuild reasons and profile shapes (pure, no GPU)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import pytest

from tinymm.backends.base import InputProfile, TensorSpec
from tinymm.backends.engine_cache import (
    EngineKey,
    ShapeLimits,
    compute_profiles,
    contract_limits,
    describe_changes,
    engine_path,
    lookup,
    record_path,
    store,
    timing_cache_path,
)
from tinymm.bundle import TensorSpec as ManifestTensorSpec
from tinymm.errors import BackendError, InputError
from tinymm.hashing import sha256_file

DECODER_INPUTS = (
    TensorSpec("input_ids", ("batch", "new"), "int64"),
    TensorSpec("past_key_values.0.key", ("batch", 4, "past", 40), "float32"),
    TensorSpec("cross.0.key", ("batch", 4, 16, 40), "float32"),
)
LIMITS = ShapeLimits(batch=(1, 2, 8), dims={"new": (1, 1, 1), "past": (1, 32, 64)})


def key(**changes) -> EngineKey:
    base = EngineKey(
        gpu_name="NVIDIA Jetson AGX Orin",
        compute_capability="8.7",
        trt_version="10.3.0",
        precision="fp16",
        profiles=compute_profiles(DECODER_INPUTS, LIMITS),
        onnx_sha256="ab" * 32,
    )
    return dataclasses.replace(base, **changes)


# --- profiles -----------------------------------------------------------------------------------


def test_profiles_take_fixed_sizes_and_named_ranges():
    profiles = {p.name: p for p in compute_profiles(DECODER_INPUTS, LIMITS)}
    assert list(profiles) == sorted(profiles)
    assert profiles["input_ids"] == InputProfile("input_ids", (1, 1), (2, 1), (8, 1))
    assert profiles["past_key_values.0.key"] == InputProfile(
        "past_key_values.0.key", (1, 4, 1, 40), (2, 4, 32, 40), (8, 4, 64, 40)
    )
    assert profiles["cross.0.key"].min == (1, 4, 16, 40) and profiles["cross.0.key"].max == (8, 4, 16, 40)


def test_profiles_accept_manifest_specs():
    spec = ManifestTensorSpec(name="pixel_values", shape=("batch", 3, 64, 64), dtype="float32")
    (profile,) = compute_profiles([spec], ShapeLimits())
    assert profile.min == (1, 3, 64, 64) and profile.opt == (1, 3, 64, 64) and profile.max == (8, 3, 64, 64)


def test_a_dynamic_dimension_without_a_range_is_an_input_error():
    with pytest.raises(InputError, match=r"'features' dimension 2 is dynamic \('frames'\).*ShapeLimits\(dims="):
        compute_profiles([TensorSpec("features", ("batch", 80, "frames"), "float32")], LIMITS)
    with pytest.raises(InputError, match="dimension 1 is dynamic"):
        compute_profiles([TensorSpec("x", ("batch", None), "float32")], LIMITS)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"batch": (2, 1, 8)}, "1 <= min <= opt <= max"),
        ({"batch": (0, 1, 8)}, "1 <= min <= opt <= max"),
        ({"batch": (1, 8)}, "(min, opt, max) tuple of ints"),
        ({"dims": {"seq": (1, 2.5, 4)}}, "tuple of ints"),
        ({"dims": {"": (1, 1, 1)}}, "dimension names"),
        ({"dims": [("seq", (1, 1, 1))]}, "must map dimension names"),
    ],
)
def test_shape_limits_are_checked_once(limits, message):
    with pytest.raises(InputError) as excinfo:
        ShapeLimits(**limits)
    assert message in str(excinfo.value)


def test_contract_limits_cover_the_bundle_dimensions():
    limits = contract_limits(64, max_batch=4, max_frames=3000)
    assert limits.batch == (1, 1, 4)
    assert limits.dims == {"frames": (1, 1500, 3000), "new": (1, 1, 1), "past": (1, 32, 64), "seq": (1, 32, 64)}
    assert "frames" not in contract_limits(64).dims


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "value", "label"),
    [
        ("gpu_name", "NVIDIA GeForce RTX 4090", "GPU changed: NVIDIA Jetson AGX Orin -> NVIDIA GeForce RTX 4090"),
        ("compute_capability", "8.9", "compute capability changed: 8.7 -> 8.9"),
        ("trt_version", "11.0.0", "TensorRT version changed: 10.3.0 -> 11.0.0"),
        ("precision", "int8", "precision changed: fp16 -> int8"),
        ("onnx_sha256", "cd" * 32, "ONNX file (sha256) changed: abababababab -> cdcdcdcdcdcd"),
    ],
)
def test_every_key_part_changes_the_fingerprint_and_is_named(part, value, label):
    old, new = key(), key(**{part: value})
    assert old.fingerprint() != new.fingerprint()
    assert describe_changes(old, new) == [label]


def test_profile_changes_are_described():
    wider = key(profiles=compute_profiles(DECODER_INPUTS, dataclasses.replace(LIMITS, batch=(1, 2, 16))))
    (reason,) = describe_changes(key(), wider)
    assert reason.startswith("shape profile changed:") and "max[16, 1]" in reason and "max[8, 1]" in reason
    assert key().fingerprint() != wider.fingerprint()


def test_fingerprint_is_stable_and_order_independent():
    shuffled = key(profiles=tuple(reversed(compute_profiles(DECODER_INPUTS, LIMITS))))
    assert shuffled == key() and shuffled.fingerprint() == key().fingerprint()
    assert len(key().fingerprint()) == 16
    assert EngineKey.from_dict(json.loads(json.dumps(key().to_dict()))) == key()


def test_bad_keys_are_input_errors():
    with pytest.raises(InputError, match="precision"):
        key(precision="fp32")
    with pytest.raises(InputError, match="compute_capability"):
        key(compute_capability="sm87")
    with pytest.raises(InputError, match="not an engine cache record"):
        EngineKey.from_dict({"gpu_name": "x"})


# --- the cache on disk --------------------------------------------------------------------------


def test_miss_store_hit(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tinymm.backends.engine_cache"):
        first = lookup(tmp_path, "decoder_with_past", key())
    assert not first.hit and first.reasons == ("no fp16 engine cached for 'decoder_with_past' yet",)
    assert "building a TensorRT engine for decoder_with_past (fp16): no fp16 engine cached" in caplog.text
    path = store(tmp_path, "decoder_with_past", key(), b"engine-bytes")
    assert path == first.path == engine_path(tmp_path, "decoder_with_past", key())
    assert path.name == f"decoder_with_past.fp16.{key().fingerprint()}.engine" and path.read_bytes() == b"engine-bytes"
    again = lookup(tmp_path, "decoder_with_past", key())
    assert again.hit and again.path == path and again.reasons == ()
    assert not list(tmp_path.glob("*.tmp"))


def test_a_rebuild_logs_which_parts_changed_and_replaces_the_old_engine(tmp_path, caplog):
    old = store(tmp_path, "image_encoder", key(), b"old")
    newer = key(trt_version="10.7.0", onnx_sha256="ef" * 32)
    with caplog.at_level(logging.INFO, logger="tinymm.backends.engine_cache"):
        decision = lookup(tmp_path, "image_encoder", newer)
    assert not decision.hit
    assert decision.reasons == (
        "TensorRT version changed: 10.3.0 -> 10.7.0",
        "ONNX file (sha256) changed: abababababab -> efefefefefef",
    )
    assert "TensorRT version changed: 10.3.0 -> 10.7.0" in caplog.text
    new = store(tmp_path, "image_encoder", newer, b"new")
    assert new.is_file() and not old.exists()
    assert EngineKey.from_dict(json.loads(record_path(tmp_path, "image_encoder", "fp16").read_text())) == newer


def test_precisions_have_their_own_slots(tmp_path):
    fp16 = store(tmp_path, "enc", key(), b"a")
    int8 = store(tmp_path, "enc", key(precision="int8"), b"b")
    assert fp16.is_file() and int8.is_file() and fp16 != int8


def test_missing_engine_and_unreadable_record_are_reasons(tmp_path):
    path = store(tmp_path, "enc", key(), b"a")
    path.unlink()
    assert lookup(tmp_path, "enc", key()).reasons == (f"the engine file {path.name} is missing",)
    record_path(tmp_path, "enc", "fp16").write_text("{not json")
    (reason,) = lookup(tmp_path, "enc", key()).reasons
    assert reason.startswith("the cache record enc.fp16.json is unreadable")


def test_an_unwritable_cache_is_a_backend_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BackendError, match="choose a writable cache_dir"):
        store(blocker / "cache", "enc", key(), b"a")


def test_names_are_safe_file_names(tmp_path):
    assert timing_cache_path(tmp_path, "NVIDIA Jetson AGX Orin", "10.3.0").name == (
        "timing-nvidia-jetson-agx-orin-trt10.3.0.cache"
    )
    assert engine_path(tmp_path, "../evil name", key()).parent == tmp_path
    assert "/" not in engine_path(tmp_path, "../evil name", key()).name


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "model.onnx"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
