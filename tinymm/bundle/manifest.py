"""The bundle manifest, format version 2: the whole-manifest dataclass and the format itself.

A bundle is a directory (or a .tar/.tar.gz/.tgz archive of one) that describes itself in
``manifest.json``, so the runtime holds no model constants in code::

    {
      "format": "tinymm-bundle",            # required, exactly this string
      "format_version": 2,                  # required; 1 and 2 are read, a newer one is refused with an upgrade hint
      "created_by": "tinymm 0.1.0",         # optional: the writer's version
      "name": "scene-vlm-student",          # required: letters, digits, '.', '_', '-'
      "family": "vision-language",          # required: vision-language | speech | example
      "architecture": "tinymm-vlm",         # v2, optional: the tinymm.families module that runs it
                                            # (tinymm-vlm, tinymm-ctc, whisper, ...); default per family
      "tasks": ["caption", "ask"],          # required, non-empty, unique names
      "components": {                       # required, non-empty; key = component name
        "image_encoder": {
          "inputs":  [{"name": "pixel_values", "shape": ["batch", 3, 64, 64], "dtype": "float32"}],
          "outputs": [{"name": "image_embeds", "shape": ["batch", 64, 128], "dtype": "float32"}],
          "roles": {"pixels": "pixel_values"},  # v2, optional: role -> tensor name (default: LAYOUT.md)
          "variants": {                     # precision (fp32 | fp16 | int8) -> ONNX file
            "fp32": {"file": "image_encoder.onnx"},
            "int8": {"file": "image_encoder.int8.onnx"}
          }
        }
      },
      "preprocess": {                       # optional; each section optional
        "image": {...},                     # tinymm.preprocess.config.ImageConfig.to_dict()
        "audio": {...},                     # AudioConfig.to_dict()
        "text":  {...}                      # TextConfig.to_dict(); "tokenizer" is a bundle path
      },
      "golden": [                           # optional parity pairs, loaded with allow_pickle=False
        {"component": "image_encoder",
         "inputs": "golden/image_encoder.inputs.npz",    # one array per component input
         "outputs": "golden/image_encoder.outputs.npz",  # one array per component output
         "tolerance": {"fp32": {"max_abs": 1e-4}, "int8": {"min_cosine": 0.99}}}
      ],
      "provenance": {...},                  # optional free-form JSON object: teacher, data,
                                            # training and export commands, metrics, created
      "model": {...},                       # optional free-form JSON object: hyperparameters the
                                            # runtime needs and cannot read from the graphs (decoder
                                            # layers, heads, CTC blank id, ...); the keys per family
                                            # are documented in export/LAYOUT.md
      "model_card": "README.md",            # optional: the bundle path of the model card
      "files": {                            # required: every file except manifest.json
        "image_encoder.onnx": {"sha256": "<64 lowercase hex>", "bytes": 1234}
      }
    }

Rules beyond the JSON types:

- Shapes hold positive ints (fixed sizes) or non-empty strings (named dynamic dimensions).
  dtypes are numpy names: float32, float16, int64, int32, bool, uint8, int8. Every variant of a
  component has the same inputs and outputs (fp16/int8 variants cast inside the graph).
- Every path is relative, POSIX and canonical, and stays inside the bundle (see paths.py):
  no ``..``, no absolute paths, no drive letters or backslashes, no symlinks that lead out.
- Every file the manifest references (variant files, golden files, the tokenizer, the model
  card) must be listed in ``files``, and so must every ONNX external data file (named inside
  the ONNX model, relative to the model's folder), so that nothing the runtime loads escapes
  the checksum.
- A tolerance names at least one of ``max_abs`` (>= 0) and ``min_cosine`` (in [-1, 1]), for a
  precision the component has.
- Unknown fields are refused at every level (they are usually typos); new fields arrive with a
  new ``format_version``. A reader refuses a manifest.json over 16 MiB before parsing it.
- TensorRT engines are device-specific and never part of a bundle.

Parsing JSON text into these classes lives in parse.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from tinymm.bundle.constants import (
    DEFAULT_ARCHITECTURES,
    FAMILIES,
    FORMAT_NAME,
    FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
)
from tinymm.bundle.errors import FieldTypeError, InvalidValueError, NotInBundleError, UnlistedFileError
from tinymm.bundle.paths import check_relative_path
from tinymm.bundle.specs import (
    Component,
    FileEntry,
    GoldenPair,
    Preprocess,
    TensorSpec,
    Tolerance,
    Variant,
    check_file_key,
)
from tinymm.bundle.validate import (
    as_mapping,
    as_tuple,
    check_choice,
    check_name,
    check_unique,
    freeze_json,
    got,
    thaw_json,
)

__all__ = ["Component", "FileEntry", "GoldenPair", "Manifest", "Preprocess", "TensorSpec", "Tolerance", "Variant"]


@dataclass(frozen=True)
class Manifest:
    """A whole format-v1 manifest. Construction checks every field and cross-reference."""

    name: str
    family: str  # one of FAMILIES
    tasks: tuple[str, ...]
    components: Mapping[str, Component]  # component name -> component
    files: Mapping[str, FileEntry]  # bundle path -> size and sha256, every file but the manifest
    preprocess: Preprocess = field(default_factory=Preprocess)
    golden: tuple[GoldenPair, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)  # free-form JSON object, read-only
    model: Mapping[str, Any] = field(default_factory=dict)  # free-form JSON object of hyperparameters, read-only
    model_card: str | None = None  # bundle path of the model card, usually README.md
    created_by: str | None = None  # e.g. "tinymm 0.1.0"
    format_version: int = FORMAT_VERSION
    # Which tinymm.families module runs the bundle (format v2), e.g. "whisper"; None: the
    # family's default (DEFAULT_ARCHITECTURES), as for every format-v1 bundle.
    architecture: str | None = None

    def __post_init__(self) -> None:
        if self.format_version not in READABLE_FORMAT_VERSIONS:
            raise InvalidValueError(
                f"format_version={self.format_version!r}: this class models versions {list(READABLE_FORMAT_VERSIONS)}"
            )
        check_name("name", self.name)
        check_choice("family", self.family, FAMILIES)
        if self.architecture is not None:
            if self.format_version < 2:
                raise InvalidValueError("architecture needs format_version 2; version 1 derives it from the family")
            check_name("architecture", self.architecture)
        self._check_tasks()
        self._check_components()
        files = as_mapping("files", self.files, FileEntry, "file entries")
        for key in files:
            check_file_key(key, f"files[{key!r}]")
        object.__setattr__(self, "files", files)
        if not isinstance(self.preprocess, Preprocess):
            raise FieldTypeError(f"preprocess must be a Preprocess, got {got(self.preprocess)}")
        golden = as_tuple("golden", self.golden, GoldenPair, "golden pairs")
        for i, pair in enumerate(golden):
            self._check_golden(i, pair)
        object.__setattr__(self, "golden", golden)
        if not isinstance(self.provenance, Mapping):
            raise FieldTypeError(f"provenance must be a JSON object, got {got(self.provenance)}")
        object.__setattr__(self, "provenance", freeze_json(self.provenance, "provenance"))
        if not isinstance(self.model, Mapping):
            raise FieldTypeError(f"model must be a JSON object, got {got(self.model)}")
        object.__setattr__(self, "model", freeze_json(self.model, "model"))
        if self.model_card is not None:
            check_relative_path(self.model_card, "model_card")
        if self.created_by is not None and not isinstance(self.created_by, str):
            raise FieldTypeError(f"created_by must be a string, got {got(self.created_by)}")
        for path, where in self.referenced_files().items():
            if path not in self.files:
                raise UnlistedFileError(
                    f"{where}={path!r} is not listed in files, so its checksum cannot be checked; "
                    "add it to files with its sha256 and size (BundleWriter does this), or rebuild the bundle"
                )

    def _check_tasks(self) -> None:
        tasks = as_tuple("tasks", self.tasks, str, "task names")
        if not tasks:
            raise InvalidValueError('tasks is empty; name what the model does, e.g. ["caption"]')
        for i, task in enumerate(tasks):
            check_name(f"tasks[{i}]", task)
        check_unique("tasks", list(tasks))
        object.__setattr__(self, "tasks", tasks)

    def _check_components(self) -> None:
        components = as_mapping("components", self.components, Component, "components")
        if not components:
            raise InvalidValueError("components is empty; a bundle needs at least one ONNX component")
        for key, component in components.items():
            if key != component.name:
                raise InvalidValueError(f"components[{key!r}] holds a component named {component.name!r}")
        object.__setattr__(self, "components", components)

    def _check_golden(self, index: int, pair: GoldenPair) -> None:
        if pair.component not in self.components:
            raise InvalidValueError(
                f"golden[{index}].component={pair.component!r} is not a component; "
                f"the components are {sorted(self.components)}"
            )
        precisions = self.components[pair.component].precisions
        for precision in pair.tolerance:
            if precision not in precisions:
                raise InvalidValueError(
                    f"golden[{index}].tolerance has {precision!r} but component {pair.component!r} "
                    f"only has {list(precisions)}; remove that tolerance or add the variant"
                )

    def referenced_files(self) -> dict[str, str]:
        """Every bundle path the manifest points at, mapped to the JSON path that names it first."""
        refs: dict[str, str] = {}
        for name, component in self.components.items():
            for precision, variant in component.variants.items():
                refs.setdefault(variant.file, f"components.{name}.variants.{precision}.file")
        for i, pair in enumerate(self.golden):
            refs.setdefault(pair.inputs, f"golden[{i}].inputs")
            refs.setdefault(pair.outputs, f"golden[{i}].outputs")
        if self.preprocess.text is not None:
            refs.setdefault(self.preprocess.text.tokenizer, "preprocess.text.tokenizer")
        if self.model_card is not None:
            refs.setdefault(self.model_card, "model_card")
        return refs

    @property
    def architecture_name(self) -> str:
        """The architecture that runs this bundle: the declared one, else the family's default."""
        return self.architecture if self.architecture is not None else DEFAULT_ARCHITECTURES[self.family]

    def component(self, name: str) -> Component:
        """The component called ``name``; NotInBundleError naming the ones there are otherwise."""
        if name not in self.components:
            raise NotInBundleError(f"bundle {self.name!r} has no component {name!r}; it has {sorted(self.components)}")
        return self.components[name]

    @property
    def total_bytes(self) -> int:
        """Size of every listed file, in bytes (manifest.json excluded)."""
        return sum(entry.size for entry in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        """The manifest as the JSON object documented at the top of this module."""
        out: dict[str, Any] = {"format": FORMAT_NAME, "format_version": self.format_version}
        if self.created_by is not None:
            out["created_by"] = self.created_by
        out.update(name=self.name, family=self.family)
        if self.architecture is not None:
            out["architecture"] = self.architecture
        out.update(
            tasks=list(self.tasks),
            components={name: c.to_dict() for name, c in self.components.items()},
        )
        preprocess = self.preprocess.to_dict()
        if preprocess:
            out["preprocess"] = preprocess
        if self.golden:
            out["golden"] = [pair.to_dict() for pair in self.golden]
        out["provenance"] = thaw_json(self.provenance)
        if self.model:
            out["model"] = thaw_json(self.model)
        if self.model_card is not None:
            out["model_card"] = self.model_card
        out["files"] = {path: self.files[path].to_dict() for path in sorted(self.files)}
        return out

    def to_json(self) -> str:
        """manifest.json text: indented, UTF-8, no NaN, newline-terminated."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
