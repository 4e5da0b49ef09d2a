"""Shared pieces of the fuzz tier (tests/test_fuzz_*.py): settings, byte mutations, the property.

The property every fuzz test checks: a reader given random or mutated input returns a valid result
or raises a TinymmError subclass; any other exception (TypeError, IndexError, struct.error, an
OpenCV error, ...) fails the test, and so does one example running past DEADLINE (a hang).
Examples are few (EXAMPLES each, ``TINYMM_FUZZ_EXAMPLES`` changes it) so that the whole tier runs in
about a minute on 2 cores; under
CI (``CI`` set) the examples are derandomized so that a CI run is reproducible.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tinymm.errors import TinymmError

EXAMPLES = int(os.environ.get("TINYMM_FUZZ_EXAMPLES", "150"))  # per fuzz test; raise it for a deeper local run
DEADLINE = timedelta(seconds=5)  # per example: far above a reader's time on these small inputs
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE,
    database=None,  # no .hypothesis/ directory in the checkout
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
# Values that break size and offset arithmetic when written into a 32-bit header field.
INTERESTING_U32 = (0, 1, 2, 7, 255, 0xFFFF, 0x7FFFFFFF, 0x80000000, 4_000_000_000, 0xFFFFFFFF)
MAX_INSERT_BYTES = 16


@st.composite
def mutated(draw: Callable[..., Any], seed: bytes, max_ops: int = 4) -> bytes:
    """``seed`` after 1..max_ops random edits: bit flips, byte sets, inserts, deletes, truncation,
    and 32-bit little-endian header values from INTERESTING_U32."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "u32")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=MAX_INSERT_BYTES))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, MAX_INSERT_BYTES))]
        elif op == "truncate":
            del data[pos:]
        elif op == "u32" and len(data) >= 4:
            pos = min(pos, len(data) - 4)
            data[pos : pos + 4] = draw(st.sampled_from(INTERESTING_U32)).to_bytes(4, "little")
    return bytes(data)


def seeds_mutated(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    """One of ``seeds`` (name -> valid input), mutated."""
    return st.sampled_from(sorted(seeds)).flatmap(lambda name: mutated(seeds[name]))


def tinymm_error_or(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, or None when it raised a TinymmError; anything else propagates."""
    try:
        return call(*args, **kwargs)
    except TinymmError as e:
        assert str(e).strip(), f"{type(e).__name__} with an empty message"
        return None
