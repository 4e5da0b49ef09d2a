"""Silero VAD (MIT, silero-vad 6.2.3): a recurrent voice activity detector over 32 ms windows, one
ONNX component ``vad`` (export/LAYOUT.md, "VAD bundle"). Speech pipelines load the shipped
``silero-vad`` bundle to tell speech from noise; ``tinymm listen`` segments streams with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.pipelines.vad import SileroVAD

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

ARCHITECTURE = "silero-vad"


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> SileroVAD:
    """The voice activity detector of a silero-vad bundle (always fp32 on the CPU, one thread)."""
    return SileroVAD.from_bundle(bundle, options)
