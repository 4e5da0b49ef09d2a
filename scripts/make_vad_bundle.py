"""Build the ``silero-vad`` bundle from the silero-vad wheel (Silero VAD, MIT).

    pip download --no-deps silero-vad==6.2.3 -d /tmp/silero     # or let the script run it
    python scripts/make_vad_bundle.py [OUT] [--wheel WHEEL] [--force] [--reference tests/data/silero_vad_reference.npz]

OUT defaults to tinymm/assets/bundles/silero-vad (a default bundle: speech pipelines and ``tinymm
listen`` load it). The bundle holds ``silero_vad_16k_op15.onnx`` (the wheel's 16 kHz model, 1.3 MB;
same weights as silero_vad.onnx without its 8 kHz branch), the wheel's MIT licence as
``LICENSE.silero``, a model card, a golden pair (one window from zero state) and the constants the
runtime reads (``model``: sample_rate, chunk_samples, context_samples, state_shape, thresholds).

``--reference`` also writes the probabilities that silero's own ``OnnxWrapper.audio_forward``
(silero_vad/utils_vad.py, needs torch) gives on a few synthetic clips, for tests/test_vad.py.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinymm.bundle import BundleWriter, Component, GoldenPair, TensorSpec, Tolerance, Variant  # noqa: E402
from tinymm.bundle.names import DEFAULT_BUNDLES_DIR  # noqa: E402
from tinymm.pipelines.vad import COMPONENT, DEFAULT_VAD_BUNDLE, VADSettings  # noqa: E402

VERSION = "6.2.3"
WHEEL = f"silero_vad-{VERSION}-py3-none-any.whl"
MODEL_MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
LICENSE_MEMBER = f"silero_vad-{VERSION}.dist-info/licenses/LICENSE"
MODEL_FILE = "silero_vad_16k_op15.onnx"
LICENSE_FILE = "LICENSE.silero"
SETTINGS = VADSettings()

CARD = f"""# silero-vad

Silero VAD {VERSION} (https://github.com/snakers4/silero-vad), MIT License, Copyright (c)
2020-present Silero Team: see {LICENSE_FILE}. The ONNX model is the wheel's `{MODEL_MEMBER}`,
unchanged.

- Input: 16 kHz mono float32 audio in windows of {SETTINGS.chunk_samples} samples (32 ms), each with
  the last {SETTINGS.context_samples} samples of the previous window prepended, and the recurrent
  state (2, 1, 128) the previous window returned (zeros at the start).
- Output: the speech probability of the window, and the next state.
- A window is speech above {SETTINGS.threshold} (and stays speech down to {SETTINGS.neg_threshold});
  a clip with less than {SETTINGS.min_speech_ms:.0f} ms of speech holds no speech for tinymm's speech
  pipelines (`rejected`, `reject_reason="no_speech"`).

Built by `python scripts/make_vad_bundle.py`.
"""


def fetch_wheel(directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"silero-vad=={VERSION}", "-d",
                    str(directory), "-q"], check=True)
    return directory / WHEEL


SPEECH_SAMPLE = ROOT / "tinymm" / "assets" / "samples" / "audio" / "command-move.wav"  # a shipped spoken command


def reference_clips(rate: int = 16000) -> dict[str, np.ndarray]:
    """A few short clips that exercise the state (int16-exact float32): silence, noise, a voiced buzz,
    a clip that is not a whole number of windows. The shipped speech sample is added by write_reference."""
    rng = np.random.default_rng(0)
    t = np.arange(int(0.8 * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    buzz = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 20))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    clips = {
        "silence": np.zeros(rate // 4, dtype=np.float32),
        "white_noise": 0.05 * rng.standard_normal(rate // 2),
        "buzz": 0.2 * envelope * buzz / np.abs(buzz).max(),
        "odd_length": 0.1 * rng.standard_normal(5000),
    }
    return {name: (np.round(np.clip(c, -1, 1) * 32767) / 32768).astype(np.float32) for name, c in clips.items()}


def write_reference(wheel_dir: Path, model: Path, out: Path) -> None:
    """The wheel's own OnnxWrapper probabilities on reference_clips() (needs torch)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("silero_utils_vad", wheel_dir / "silero_vad" / "utils_vad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wrapper = module.OnnxWrapper(str(model), force_onnx_cpu=True)
    from tinymm.preprocess.audio_io import load_audio, to_mono

    arrays = {}
    for name, clip in reference_clips().items():
        arrays[f"{name}.audio"] = np.round(clip * 32768).astype(np.int16)  # float32 = int16 / 32768
        arrays[f"{name}.probs"] = wrapper.audio_forward(torch.from_numpy(clip), 16000).numpy().reshape(-1)
    speech, rate = load_audio(str(SPEECH_SAMPLE))
    assert rate == 16000, rate
    arrays["command-move.probs"] = wrapper.audio_forward(torch.from_numpy(to_mono(speech)), 16000).numpy().reshape(-1)
    np.savez_compressed(out, **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_BUNDLES_DIR / DEFAULT_VAD_BUNDLE)
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL} (default: pip download it)")
    parser.add_argument("--force", action="store_true", help="replace the bundle at OUT")
    parser.add_argument("--reference", type=Path, help="also write the wheel's reference probabilities here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        unpacked = Path(tmp) / "wheel"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(unpacked, members=[MODEL_MEMBER, LICENSE_MEMBER, "silero_vad/utils_vad.py"])
        model = unpacked / MODEL_MEMBER
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        x = reference_clips()["buzz"][None, : SETTINGS.chunk_samples + SETTINGS.context_samples]
        state = np.zeros(SETTINGS.state_shape, dtype=np.float32)
        sr = np.array(SETTINGS.sample_rate, dtype=np.int64)
        prob, next_state = session.run(None, {"input": x, "state": state, "sr": sr})
        with BundleWriter(args.out, overwrite=args.force) as writer:
            writer.add_file(MODEL_FILE, model)
            writer.add_file(LICENSE_FILE, unpacked / LICENSE_MEMBER)
            writer.add_text("README.md", CARD)
            writer.add_arrays("golden/vad.inputs.npz", {"input": x, "state": state, "sr": sr})
            writer.add_arrays("golden/vad.outputs.npz", {"output": prob, "stateN": next_state})
            component = Component(
                name=COMPONENT,
                inputs=(TensorSpec("input", ("batch", "samples"), "float32"),
                        TensorSpec("state", (2, "batch", 128), "float32"),
                        TensorSpec("sr", (), "int64")),
                outputs=(TensorSpec("output", ("batch", 1), "float32"),
                         TensorSpec("stateN", (2, "batch", 128), "float32")),
                variants={"fp32": Variant(MODEL_FILE)},
                roles={"audio": "input", "state": "state", "sample_rate": "sr", "speech_prob": "output",
                       "next_state": "stateN"},
            )
            writer.write(
                name=DEFAULT_VAD_BUNDLE, family="speech", architecture="silero-vad", tasks=["vad"],
                components={COMPONENT: component},
                golden=[GoldenPair(COMPONENT, "golden/vad.inputs.npz", "golden/vad.outputs.npz",
                                   {"fp32": Tolerance(max_abs=1e-5)})],
                model={"sample_rate": SETTINGS.sample_rate, "chunk_samples": SETTINGS.chunk_samples,
                       "context_samples": SETTINGS.context_samples, "state_shape": list(SETTINGS.state_shape),
                       "threshold": SETTINGS.threshold, "neg_threshold": SETTINGS.neg_threshold,
                       "min_speech_ms": SETTINGS.min_speech_ms},
                provenance={"source": f"PyPI silero-vad {VERSION}: {MODEL_MEMBER}",
                            "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                            "licence": f"MIT ({LICENSE_FILE})",
                            "command": "python scripts/make_vad_bundle.py"},
            )
        if args.reference:
            write_reference(unpacked, model, args.reference)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
