"""ONNX export of the tiny VLM and speech models: parity with torch, dynamic axes, KV cache, graph checks."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
onnx = pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")
from onnx import TensorProto, helper  # noqa: E402

from export.onnx_common import (  # noqa: E402
    ComponentGraph,
    ExportError,
    ExportOptions,
    export_onnx,
    finalize_model,
    forbidden_nodes,
    kv_names,
)
from export.onnx_speech import speech_graphs, speech_random_cases  # noqa: E402
from export.onnx_vlm import vlm_graphs, vlm_random_cases  # noqa: E402
from export.parity import (  # noqa: E402
    PARITY_MAX_ABS,
    ParityError,
    check_parity,
    component_parity,
    greedy_parity,
    load_session,
    ort_greedy,
    torch_greedy_no_cache,
)
from tinymm.bundle import TensorSpec  # noqa: E402
from tinymm.errors import EXIT_TOLERANCE  # noqa: E402
from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """On a busy 2-core machine, two spin-waiting torch threads make tiny forwards 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory):
    """(model, graphs, sessions) of the tiny VLM exported once for the module."""
    torch.manual_seed(0)
    model = VisionLanguageModel(VLMConfig.tiny()).eval()
    graphs = vlm_graphs(model)
    out = tmp_path_factory.mktemp("vlm")
    paths = {name: export_onnx(graph, out / f"{name}.onnx") for name, graph in graphs.items()}
    return model, graphs, {name: load_session(path) for name, path in paths.items()}, paths


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def speech(request, tmp_path_factory: pytest.TempPathFactory):
    """The tiny speech encoder exported with each exporter (both must reach the same parity)."""
    torch.manual_seed(1)
    model = SpeechCTCModel(SpeechConfig.tiny()).eval()
    graphs = speech_graphs(model)
    path = export_onnx(graphs["speech_encoder"], tmp_path_factory.mktemp("speech") / "speech_encoder.onnx",
                       ExportOptions(exporter=request.param))
    return model, graphs, load_session(path), path


def _max_abs(graph: ComponentGraph, session, feeds) -> float:
    expected = graph.run_torch(feeds)
    got = session.run(feeds, graph.output_names)
    for name in graph.output_names:
        assert got[name].shape == expected[name].shape, name
    return max(float(np.abs(got[n].astype(np.float64) - expected[n]).max()) for n in graph.output_names)


@pytest.mark.parametrize(("batch", "seq", "new"), [(1, 1, 1), (3, 7, 2), (2, 4, 5)])
def test_every_vlm_component_matches_torch_at_any_batch_and_length(vlm, batch: int, seq: int, new: int) -> None:
    _, graphs, sessions, _ = vlm
    cases = vlm_random_cases(graphs, np.random.default_rng(batch * 10 + seq), batch, seq, new)
    for name, graph in graphs.items():
        assert _max_abs(graph, sessions[name], cases[name]) <= PARITY_MAX_ABS, name
    past = cases["decoder_with_past"]["past_key_values.0.key"].shape[2]
    present = sessions["decoder_with_past"].run(cases["decoder_with_past"])["present.0.key"]
    assert past == seq and present.shape[2] == seq + new  # "past+new" really grows


def test_component_parity_reports_random_and_real_cases(vlm) -> None:
    _, graphs, sessions, _ = vlm
    graph = graphs["image_encoder"]
    rng = np.random.default_rng(0)
    random_cases = [vlm_random_cases(graphs, rng, b, 2, 1)["image_encoder"] for b in (1, 3)]
    real = random_cases[1]
    report = component_parity(graph, sessions["image_encoder"], random_cases, [(real, graph.run_torch(real))])
    assert report["random"]["cases"] == 2 and report["random"]["batch_sizes"] == [1, 3]
    assert report["max_abs"] <= PARITY_MAX_ABS and report["min_cosine"] > 0.99999
    wrong = {k: v + 1.0 for k, v in graph.run_torch(real).items()}  # a torch reference that disagrees
    assert component_parity(graph, sessions["image_encoder"], random_cases, [(real, wrong)])["max_abs"] > 0.5


def test_kv_cache_greedy_in_onnxruntime_matches_no_cache_torch(vlm) -> None:
    model, _, sessions, _ = vlm
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    prompt = rng.integers(0, model.config.vocab_size, (3, 4), dtype=np.int64)
    steps = model.config.max_text_len - prompt.shape[1]
    cached = ort_greedy(sessions, pixels, prompt, steps)
    assert cached.shape == (3, steps) and cached.dtype == np.int64
    np.testing.assert_array_equal(cached, torch_greedy_no_cache(model, pixels, prompt, steps))
    report = greedy_parity(model, sessions, pixels, prompt, max_new_tokens=100)
    assert report == {"tokens_match": True, "steps": steps, "batch": 3, "first_mismatch_step": None}


def test_exported_graphs_have_no_control_flow_a_modern_opset_and_the_layout_names(vlm) -> None:
    _, graphs, sessions, paths = vlm
    for name, path in paths.items():
        model = onnx.load(str(path))
        assert forbidden_nodes(model) == [], name
        assert not any(node.op_type == "If" for node in model.graph.node)
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        onnx.checker.check_model(model)
    L = VLMConfig.tiny().dec_layers
    shapes = {spec.name: spec.shape for spec in sessions["decoder_with_past"].outputs}
    assert shapes["present.0.key"] == ("batch", 2, "past+new", 16)
    inputs = [spec.name for spec in sessions["decoder_with_past"].inputs]
    assert inputs == ["input_ids", *kv_names("past_key_values", L), *kv_names("cross", L)]
    image_outputs = [spec.name for spec in sessions["image_encoder"].outputs]
    assert image_outputs == ["image_embeds", "image_embedding", *kv_names("cross", L)]
    embedding = sessions["text_encoder"].run(vlm_random_cases(graphs, np.random.default_rng(0), 2, 3, 1)["text_encoder"])
    np.testing.assert_allclose(np.linalg.norm(embedding["text_embedding"], axis=1), 1.0, rtol=1e-5)


def test_exported_files_carry_no_debug_metadata(speech) -> None:
    """The dynamo exporter annotates every node with stack traces; export drops them (bundle size)."""
    model = onnx.load(str(speech[3]))
    values = [*model.graph.node, *model.graph.value_info, *model.graph.input, *model.graph.output,
              *model.graph.initializer]
    assert not any(len(v.metadata_props) for v in values)


def test_speech_encoder_matches_torch_with_padding_and_dynamic_frames(speech) -> None:
    model, graphs, session, _ = speech
    graph = graphs["speech_encoder"]
    for batch, frames in ((1, 9), (3, 40), (2, 123)):
        feeds = speech_random_cases(graphs, np.random.default_rng(frames), batch, frames)["speech_encoder"]
        assert _max_abs(graph, session, feeds) <= PARITY_MAX_ABS
        got = session.run(feeds)
        np.testing.assert_array_equal(got["output_lengths"], model.output_lengths(torch.from_numpy(feeds["feature_lengths"])).numpy())
        assert got["log_probs"].shape[:2] == (batch, (frames + 3) // 4)
        np.testing.assert_allclose(np.exp(got["log_probs"]).sum(-1), 1.0, rtol=1e-5)


def test_finalize_refuses_if_nodes_and_pruned_inputs() -> None:
    then_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Cast", ["s"], ["c"], to=TensorProto.BOOL),
         helper.make_node("If", ["c"], ["y"], name="merged_decoder", then_branch=then_branch, else_branch=else_branch)],
        "with_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert forbidden_nodes(model) == ["If merged_decoder"]
    wrapper = ComponentGraph("toy", torch.nn.Identity().eval(), inputs=(TensorSpec("x", (1,), "float32"),),
                             outputs=(TensorSpec("y", (1,), "float32"),), example=(torch.zeros(1),))
    with pytest.raises(ExportError, match="control flow.*If merged_decoder"):
        finalize_model(model, wrapper, ExportOptions(exporter="torchscript"))
    missing = ComponentGraph("toy", torch.nn.Identity().eval(), inputs=(TensorSpec("z", (1,), "float32"),),
                             outputs=(TensorSpec("y", (1,), "float32"),), example=(torch.zeros(1),))
    model.graph.ClearField("node")
    with pytest.raises(ExportError, match="no input/output 'z'"):
        finalize_model(model, missing, ExportOptions(exporter="torchscript"))


def test_wrappers_must_be_in_eval_mode_and_options_are_checked() -> None:
    with pytest.raises(ValueError, match="training mode"):
        ComponentGraph("toy", torch.nn.Linear(2, 2), inputs=(TensorSpec("x", (1, 2), "float32"),),
                       outputs=(TensorSpec("y", (1, 2), "float32"),), example=(torch.zeros(1, 2),))
    with pytest.raises(ValueError, match="opset"):
        ExportOptions(opset=13)


def _report(max_abs: float, tokens_match: bool = True) -> dict:
    summary = {"max_abs": max_abs, "worst_output": "logits"}
    return {"components": {"decoder_first": {"max_abs": max_abs, "random": summary, "real": summary}},
            "greedy": {"tokens_match": tokens_match, "steps": 5, "first_mismatch_step": None if tokens_match else 2}}


def test_check_parity_fails_on_large_errors_and_different_tokens() -> None:
    check_parity(_report(PARITY_MAX_ABS / 2))
    with pytest.raises(ParityError, match="decoder_first: max abs error 0.01") as error:
        check_parity(_report(1e-2))
    assert error.value.exit_code == EXIT_TOLERANCE
    with pytest.raises(ParityError, match="differ from step 2 of 5"):
        check_parity(_report(0.0, tokens_match=False))
    with pytest.raises(ParityError):
        check_parity(_report(float("nan")))


def test_export_options_pick_each_exporters_lowest_opset() -> None:
    assert ExportOptions().exporter == "dynamo" and ExportOptions().opset == 18
    assert ExportOptions(exporter="torchscript").opset == 17
    with pytest.raises(ValueError, match="dynamo exporter"):
        ExportOptions(opset=17)
    with pytest.raises(ValueError, match="exporter"):
        ExportOptions(exporter="jit")
