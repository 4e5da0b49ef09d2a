"""Nothing in a bundle may make tinymm read or write outside it: ONNX external data and archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from test_bundle_fixtures import (
    MODEL,
    external_weight,
    golden_inputs,
    onnx,
    read_and_verify,
    relist,
    replace_model,
    tiny_bundle,  # noqa: F401  (a fixture)
    tiny_model,
    tiny_weights,
    write_tiny_bundle,
)
from tinymm.bundle import (
    ArchiveError,
    MissingFileError,
    OutputExistsError,
    UnlistedFileError,
    UnsafeArchiveError,
    UnsafePathError,
    pack_bundle,
    read_bundle,
)
from tinymm.bundle.onnx_scan import OnnxWireError, scan_onnx

from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (test_bundle_fixtures skips without onnx)

# ---- ONNX external data -------------------------------------------------------------------


def test_external_data_saved_by_onnx_is_found_listed_and_runs(tmp_path: Path) -> None:
    root = tmp_path / "ext"
    write_tiny_bundle(root, external_data=True)
    assert "model.onnx.data" in read_bundle(root).manifest.files
    assert read_and_verify(root).external_data == ("model.onnx.data",)
    from tinymm.backends import BackendOptions, get_backend

    session = get_backend("onnxruntime").load(root / MODEL, BackendOptions(provider="cpu"))
    x = golden_inputs()["x"]
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ tiny_weights(), rtol=1e-6)


@pytest.mark.parametrize(
    "location", ["../../etc/passwd", "/etc/passwd", "..\\secret.bin", "C:/weights.bin", "a/../../b"]
)
def test_external_data_location_escaping_the_bundle_is_refused(tiny_bundle: Path, location: str) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight(location)))
    with pytest.raises(UnsafePathError, match="external data location of tensor 'w'"):
        read_bundle(tiny_bundle)


def test_deferred_scan_still_refuses_the_variant_that_is_opened(tiny_bundle: Path) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight("../../etc/passwd")))
    bundle = read_bundle(tiny_bundle, scan_models=False)  # what tinymm.load does: scan on open
    component = next(iter(bundle.manifest.components))
    with pytest.raises(UnsafePathError, match="external data location of tensor 'w'"):
        bundle.checked_component_path(component, "fp32")


def test_writer_refuses_a_model_with_unsafe_external_data_and_publishes_nothing(tmp_path: Path) -> None:
    from tinymm.bundle import BundleWriter, Component, TensorSpec, Variant

    out = tmp_path / "out"
    writer = BundleWriter(out)
    writer.add_bytes(MODEL, tiny_model(weight=external_weight("../../etc/passwd")).SerializeToString())
    x, y = TensorSpec("x", ("batch", 4), "float32"), TensorSpec("y", ("batch", 2), "float32")
    component = Component("model", (x,), (y,), {"fp32": Variant(MODEL)})
    with pytest.raises(UnsafePathError, match="../../etc/passwd"):
        writer.write(name="bad", family="example", tasks=["embed"], components={"model": component})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too


def test_external_data_location_in_non_canonical_spelling_is_accepted(tiny_bundle: Path) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight("./data//w.bin")))
    (tiny_bundle / "data").mkdir()
    (tiny_bundle / "data" / "w.bin").write_bytes(tiny_weights().tobytes())
    relist(tiny_bundle, "data/w.bin")
    assert read_and_verify(tiny_bundle).external_data == ("data/w.bin",)
    from tinymm.backends import BackendOptions, get_backend

    session = get_backend("onnxruntime").load(tiny_bundle / MODEL, BackendOptions(provider="cpu"))
    x = golden_inputs()["x"]
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ tiny_weights(), rtol=1e-6)


def test_external_data_file_missing(tiny_bundle: Path) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight("weights.bin")))
    with pytest.raises(MissingFileError, match="'weights.bin' is missing"):
        read_bundle(tiny_bundle)


def test_external_data_file_present_but_not_listed(tiny_bundle: Path) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight("weights.bin")))
    (tiny_bundle / "weights.bin").write_bytes(tiny_weights().tobytes())
    with pytest.raises(UnlistedFileError, match="not listed in manifest.json files"):
        read_bundle(tiny_bundle)


def test_external_data_symlink_leading_out_of_the_bundle(tiny_bundle: Path) -> None:
    replace_model(tiny_bundle, tiny_model(weight=external_weight("weights.bin")))
    outside = tiny_bundle.parent / "secret.bin"
    outside.write_bytes(tiny_weights().tobytes())
    os.symlink(outside, tiny_bundle / "weights.bin")
    with pytest.raises(UnsafePathError, match="outside the bundle"):
        read_bundle(tiny_bundle)


def test_external_data_hidden_in_a_subgraph_is_refused(tiny_bundle: Path) -> None:
    model = tiny_model()
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    identity = helper.make_node("Identity", ["c"], ["out"])
    branch = helper.make_graph([identity], "branch", [], [out], [external_weight("../../x")])
    branch.initializer[0].name = "c"
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    replace_model(tiny_bundle, model)
    with pytest.raises(UnsafePathError, match="'..'"):
        read_bundle(tiny_bundle)


# ---- the protobuf reader, against models built by the onnx package ------------------------


def test_scan_reads_interface_and_every_external_location() -> None:
    model = tiny_model(weight=external_weight("main.bin"))
    indices = numpy_helper.from_array(np.array([0], dtype=np.int64), "idx")
    sparse = helper.make_sparse_tensor(external_weight("sparse_values.bin"), indices, [8])
    model.graph.sparse_initializer.append(sparse)
    constant = helper.make_node("Constant", [], ["k"], value=external_weight("attr_t.bin"))
    body = helper.make_graph([constant], "body", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)],
                             [external_weight("subgraph_init.bin")])
    loop_like = helper.make_node("If", ["cond"], ["k2"], then_branch=body, else_branch=body)
    model.graph.node.extend([loop_like])
    tensors_attr = helper.make_attribute("many", [external_weight("attr_tensors.bin")])
    function_node = helper.make_node("Constant", [], ["f"], value=external_weight("function.bin"))
    function = helper.make_function("custom", "fn", [], ["f"], [function_node], [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.graph.node.append(helper.make_node("Custom", [], ["z"], domain="custom"))
    model.graph.node[-1].attribute.append(tensors_attr)
    summary = scan_onnx(model.SerializeToString())
    assert summary.inputs == ("x",) and summary.outputs == ("y",) and "w" in summary.initializers
    assert sorted({t.location for t in summary.external_data}) == sorted(
        ["main.bin", "sparse_values.bin", "attr_t.bin", "subgraph_init.bin", "attr_tensors.bin", "function.bin"]
    )


def test_scan_of_a_model_saved_with_external_data_matches_onnx(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    loaded = onnx.load(str(path), load_external_data=False)
    expected = [(t.name, t.external_data[0].value) for t in loaded.graph.initializer]
    summary = scan_onnx(path.read_bytes())
    assert [(t.tensor, t.location) for t in summary.external_data] == expected == [("w", "m.data")]


@pytest.mark.parametrize(
    "data, message",
    [
        (tiny_model().SerializeToString()[:-3], "claims"),  # truncated inside the graph
        (b"\x3a\x80", "truncated varint"),  # graph field, length varint cut short
        (b"\x08\x01", "no graph"),  # only ir_version
        (b"\x3b", "wire type 3"),  # field 7 with a group wire type
    ],
)
def test_scan_rejects_malformed_bytes(data: bytes, message: str) -> None:
    with pytest.raises(OnnxWireError, match=message):
        scan_onnx(data)


def test_scan_rejects_external_tensor_without_location() -> None:
    weight = numpy_helper.from_array(tiny_weights(), "w")
    weight.data_location = TensorProto.EXTERNAL
    with pytest.raises(OnnxWireError, match="names no location"):
        scan_onnx(tiny_model(weight=weight).SerializeToString())


# ---- archives ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_packed_bundle_reads_back(tiny_bundle: Path, tmp_path: Path, suffix: str) -> None:
    archive = pack_bundle(tiny_bundle, tmp_path / f"tiny{suffix}")
    with read_bundle(archive) as bundle:
        root = bundle.root
        assert bundle.manifest == read_bundle(tiny_bundle).manifest
        assert (root / MODEL).is_file()
    assert root.is_dir() and read_bundle(archive).root == root  # extracted once, into the cache, and reused


def test_archive_extracts_into_a_given_directory_only_if_empty(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.tgz")
    bundle = read_bundle(archive, extract_to=tmp_path / "x")
    assert bundle.root == tmp_path / "x" / "tiny"
    with pytest.raises(OutputExistsError, match="not an empty directory"):
        read_bundle(archive, extract_to=tmp_path / "x")


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        manifest = tarfile.TarInfo("b/manifest.json")
        manifest.size = 2
        tar.addfile(manifest, io.BytesIO(b"{}"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("../evil.txt"), "'..'"),
        (_member("b/../../evil.txt"), "'..'"),
        (_member("/tmp/evil.txt"), "absolute path"),
        (_member("b\\..\\evil.txt"), "backslash"),
        (_member("b/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("b/hard", tarfile.LNKTYPE, "b/manifest.json"), "is a link"),
        (_member("b/tty", tarfile.CHRTYPE), "device file or FIFO"),
        (_member("b/fifo", tarfile.FIFOTYPE), "device file or FIFO"),
    ],
)
def test_unsafe_archive_members_are_refused_before_anything_is_written(tmp_path: Path, member, message: str) -> None:
    archive = _tar_with(tmp_path, member, b"pwned" if member.isfile() else b"")
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        read_bundle(archive, extract_to=out)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert not out.exists() or not any(out.iterdir())


def test_archive_that_is_not_a_tar_or_holds_no_bundle(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        read_bundle(garbage)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("notes.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="does not hold a tinymm bundle"):
        read_bundle(empty)
