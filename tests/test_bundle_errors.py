"""Every way a bundle can be wrong raises its own BundleError subclass, with an actionable message."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_bundle_fixtures import BREAKAGES, read_and_verify, tiny_bundle  # noqa: F401  (tiny_bundle is a fixture)
from tinymm.bundle import BundleNotFoundError, read_bundle


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_each_breakage_is_caught_with_its_own_error(tiny_bundle: Path, name: str) -> None:
    breakage, error, fragment = BREAKAGES[name]
    breakage(tiny_bundle)
    with pytest.raises(error) as info:
        read_and_verify(tiny_bundle)
    assert type(info.value) is error
    assert fragment in str(info.value)
    assert info.value.exit_code == 4


def test_bundle_path_missing_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="does not exist"):
        read_bundle(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BundleNotFoundError, match="not a directory nor a bundle archive"):
        read_bundle(tmp_path / "notes.txt")
