"""Names and limits of bundle format v1, shared by the manifest, reader and writer."""

from __future__ import annotations

FORMAT_NAME = "tinymm-bundle"  # the manifest's "format" value
FORMAT_VERSION = 1  # the newest manifest version this tinymm reads and writes
MANIFEST_NAME = "manifest.json"  # at the bundle root; every other file is listed in it
MODEL_CARD_NAME = "README.md"  # the usual model card file

FAMILIES = ("vision-language", "speech", "example")
PRECISIONS = ("fp32", "fp16", "int8")  # in order of preference when a caller asks for "best"
DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8", "int8")  # numpy names

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # larger manifest.json files are refused before parsing
SHA256_HEX_CHARS = 64  # length of a sha256 digest in hex
