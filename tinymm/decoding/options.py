"""How a caption or an answer is decoded: the options, checked once.

The defaults give greedy decoding with no logit filter, the way the models were evaluated in
training. ``max_new_tokens=None`` lets the pipeline use the bundle's default (the manifest's
``model.max_new_tokens``), capped by the room the prompt leaves in the decoder's context.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

MAX_BEAM_SIZE = 64  # wider beams cost beam_size decoder rows per step for no gain on short texts


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int | None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high if high is not None else 'inf'}")
        return value

    return parse


def _number(low_exclusive: float | None) -> Callable[[str], float]:
    """An argparse type: a finite float, above ``low_exclusive`` when given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (low_exclusive is not None and value <= low_exclusive):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > {low_exclusive}")
        return value

    return parse


@dataclass(frozen=True)
class DecodingOptions:
    """Search strategy and logit filters for one ``generate`` call; a bad value is a ValueError."""

    max_new_tokens: int | None = None  # most tokens generated, EOS included; None = the bundle's default
    beam_size: int = 1  # 1 = greedy search; more = beam search over that many hypotheses per input
    # Beam ranking: sum of token log-probabilities / (generated length, EOS included) ** length_penalty.
    # 0 ranks by the plain sum (favours short texts), 1 by the mean log-probability per token.
    length_penalty: float = 1.0
    # CTRL's penalty on tokens already generated: a positive logit is divided by it, a negative one
    # multiplied. 1 disables it; values above 1 discourage repetition.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # n > 0: never generate an n-gram of tokens twice; 0 disables it

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise ValueError(
                f"DecodingOptions.max_new_tokens={self.max_new_tokens!r} must be a positive integer, "
                "or None for the bundle's default"
            )
        if not _is_int(self.beam_size) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(
                f"DecodingOptions.beam_size={self.beam_size!r} must be an integer in 1..{MAX_BEAM_SIZE} "
                "(1 = greedy search)"
            )
        for name in ("length_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"DecodingOptions.{name}={value!r} must be a finite number")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"DecodingOptions.repetition_penalty={self.repetition_penalty!r} must be > 0 (1 disables it)"
            )
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"DecodingOptions.no_repeat_ngram_size={self.no_repeat_ngram_size!r} must be an integer >= 0 "
                "(0 disables it)"
            )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The command-line flags of these options (checked by argparse: bad values are usage errors)."""
        group = parser.add_argument_group("decoding")
        group.add_argument("--max-new-tokens", type=_int_in(1, None), default=None,
                           help="most tokens to generate (default: the bundle's)")
        group.add_argument("--beam-size", type=_int_in(1, MAX_BEAM_SIZE), default=1, help="1: greedy search (default)")
        group.add_argument("--length-penalty", type=_number(None), default=1.0,
                           help="beam ranking: sum log-prob / length ** this (default 1)")
        group.add_argument("--repetition-penalty", type=_number(0.0), default=1.0,
                           help="> 1 discourages repeated tokens (default 1: off)")
        group.add_argument("--no-repeat-ngram-size", type=_int_in(0, None), default=0,
                           help="never repeat an n-gram of this size (default 0: off)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DecodingOptions:
        return cls(
            max_new_tokens=args.max_new_tokens, beam_size=args.beam_size, length_penalty=args.length_penalty,
            repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        )
