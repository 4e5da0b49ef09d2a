"""Bundle names: a name that is not an existing path is looked up in two places, in this order.

1. the default bundles shipped with tinymm, ``tinymm/assets/bundles/<name>`` (``scene-vlm``,
   ``speech-commands``; a source checkout builds them with scripts/make_default_bundles.py; and
   ``silero-vad``, which speech-commands names: scripts/make_vad_bundle.py);
2. the user's bundle directory (``user_bundle_dir()``): ``$TINYMM_BUNDLE_DIR`` when set, else
   ``$XDG_DATA_HOME/tinymm/bundles`` when that is an absolute path, else
   ``~/.local/share/tinymm/bundles``. Bundles made on this machine go there (for instance
   ``scripts/make_whisper_bundle.py``), so that ``--bundle whisper-base`` finds them.

In either place a bundle is a directory ``<name>`` or an archive ``<name>.tar``, ``.tar.gz`` or
``.tgz``. A shipped bundle wins over a user bundle of the same name, so ``tinymm demo`` always
runs the bundles it was checked with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from tinymm.bundle.archive import ARCHIVE_SUFFIXES
from tinymm.bundle.errors import BundleNotFoundError
from tinymm.user_cache import user_dir

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "bundles"
DEFAULT_VISION_BUNDLE = "scene-vlm"  # the vision-language bundle the task subcommands use by default
DEFAULT_SPEECH_BUNDLE = "speech-commands"  # the speech bundle they use by default
# The user's bundle directory: the first of these that is set.
BUNDLE_DIR_ENV = "TINYMM_BUNDLE_DIR"  # the directory itself
XDG_DATA_ENV = "XDG_DATA_HOME"  # the user's data directory; bundles are in "tinymm/bundles" under it
USER_BUNDLES_SUBDIR = Path("tinymm") / "bundles"
FALLBACK_DATA_DIR = Path("~") / ".local" / "share"  # the user's data directory when XDG_DATA_HOME is not set


def user_bundle_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's bundle directory (nothing is created); environ: default os.environ.

    ``$TINYMM_BUNDLE_DIR`` when set, else ``$XDG_DATA_HOME/tinymm/bundles`` when that is an
    absolute path (the XDG spec ignores relative ones), else ``~/.local/share/tinymm/bundles``.
    """
    return user_dir(BUNDLE_DIR_ENV, XDG_DATA_ENV, FALLBACK_DATA_DIR, USER_BUNDLES_SUBDIR, environ)


def bundle_names_in(directory: Path) -> tuple[str, ...]:
    """Names of the bundles (directories and archives) in ``directory``, sorted; () when it does not exist.

    Hidden entries (a leading dot, such as a build's staging directory) are skipped.
    """
    if not directory.is_dir():
        return ()
    names = set()
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue
        suffix = next((s for s in ARCHIVE_SUFFIXES if entry.name.endswith(s)), None)
        if suffix is not None and entry.is_file():
            names.add(entry.name[: -len(suffix)])
        elif entry.is_dir():
            names.add(entry.name)
    return tuple(sorted(names))


def default_bundle_names() -> tuple[str, ...]:
    """Names of the default bundles shipped in tinymm/assets/bundles (none until they are trained)."""
    return bundle_names_in(DEFAULT_BUNDLES_DIR)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, *(directory / f"{name}{s}" for s in ARCHIVE_SUFFIXES)):
        if candidate.exists():
            return candidate
    return None


def _listing(directory: Path, names: tuple[str, ...], when_empty: str) -> str:
    return f"{', '.join(names)} (in {directory})" if names else f"none in {directory}{when_empty}"


def resolve_bundle(name_or_path: str | Path) -> Path:
    """The path of a bundle given as a path, or as the name of a shipped or user bundle.

    Raises BundleNotFoundError naming both places searched, and the bundles each holds.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path)
    is_name = isinstance(name_or_path, str) and "/" not in text and "\\" not in text and not text.startswith(".")
    if is_name and text:
        user_dir = user_bundle_dir()
        for directory in (DEFAULT_BUNDLES_DIR, user_dir):
            found = _find(directory, text)
            if found is not None:
                return found
        shipped = _listing(DEFAULT_BUNDLES_DIR, default_bundle_names(),
                           " (a source checkout builds them with scripts/make_default_bundles.py)")
        mine = _listing(user_dir, bundle_names_in(user_dir), f" (${BUNDLE_DIR_ENV} moves it)")
        raise BundleNotFoundError(
            f"bundle {text!r} is neither an existing path nor a default bundle; default bundles: {shipped}; "
            f"user bundles: {mine}. Pass a bundle directory or archive, e.g. --bundle path/to/bundle (make one "
            "with python -m export), or put it in the user bundle directory"
        )
    raise BundleNotFoundError(
        f"bundle {str(path)!r} does not exist; give a bundle directory (holding manifest.json) or a bundle "
        f"archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )
