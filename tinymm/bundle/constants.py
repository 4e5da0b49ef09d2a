"""Names and limits of the bundle format (versions 1 and 2), shared by the manifest, reader and writer."""

from __future__ import annotations

FORMAT_NAME = "tinymm-bundle"  # the manifest's "format" value
FORMAT_VERSION = 2  # the newest manifest version this tinymm reads and writes
# Version 2 added "architecture" (which tinymm.families module runs the bundle) and per-component
# "roles" (role -> tensor name). Version 1 bundles still load: their architecture is the default of
# their family and their roles are the names of export/LAYOUT.md.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"  # at the bundle root; every other file is listed in it
MODEL_CARD_NAME = "README.md"  # the usual model card file

FAMILIES = ("vision-language", "speech", "example")
# The architecture of a bundle that names none (every format-v1 bundle), per family.
DEFAULT_ARCHITECTURES = {"vision-language": "tinymm-vlm", "speech": "tinymm-ctc", "example": "example"}
PRECISIONS = ("fp32", "fp16", "int8")  # in order of preference when a caller asks for "best"
DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8", "int8")  # numpy names

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # larger manifest.json files are refused before parsing
SHA256_HEX_CHARS = 64  # length of a sha256 digest in hex
