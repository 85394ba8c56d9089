"""Graph rewrites before a runtime compiles an export (``fastddpm.onnx.passes``): the rewritten graph computes
what the original computes (ONNX Runtime runs both), and only the patterns a pass names are touched."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastddpm.onnx import read_onnx  # noqa: E402
from fastddpm.onnx.passes import split_projection_convs  # noqa: E402
from fastddpm.tolerances import assert_close  # noqa: E402


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ops(model):
    return [node.op_type for node in model.graph.node]


def _hand_built():
    """x → three convolutions, each followed by a channel Split:
    a: bias, uneven constant sizes (2, 3, 1) — rewritten;
    b: its output also read by a Relu — left alone (the fused conv is still needed);
    c: grouped (group=2) — left alone (a part's filters would read the wrong input channels)."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in (
        ("wa", (6, 4, 1, 1)), ("ba", (6,)), ("wb", (6, 4, 3, 3)), ("wc", (6, 2, 1, 1)))]
    init.append(numpy_helper.from_array(np.array([2, 3, 1], np.int64), "sizes"))
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ya"], name="conv_a"),
        helper.make_node("Split", ["ya", "sizes"], ["a0", "a1", "a2"], axis=1),
        helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["yb"], ["b0", "b1", "b2"], axis=1, num_outputs=3),
        helper.make_node("Relu", ["yb"], ["rb"]),
        helper.make_node("Conv", ["x", "wc"], ["yc"], name="conv_c", group=2),
        helper.make_node("Split", ["yc"], ["c0", "c1"], axis=1, num_outputs=2),
    ]
    channels = {"a0": 2, "a1": 3, "a2": 1, "b0": 2, "b1": 2, "b2": 2, "rb": 6, "c0": 3, "c1": 3}
    graph = helper.make_graph(
        nodes, "hand_built", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, c, 5, 5]) for name, c in channels.items()], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_only_a_plain_conv_split_is_rewritten_and_computes_the_same():
    model = _hand_built()
    before = model.SerializeToString()
    rewritten = split_projection_convs(model)
    assert model.SerializeToString() == before  # the caller's proto is untouched
    onnx.checker.check_model(rewritten, full_check=True)
    # conv_a and its Split became three convolutions; conv_b's and conv_c's Splits are still there.
    assert _ops(rewritten).count("Split") == 2 and _ops(rewritten).count("Conv") == 5
    assert "wa" not in {init.name for init in rewritten.graph.initializer}  # the fused weights are dropped
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)}
    for got, expected in zip(_run(rewritten, feeds), _run(model, feeds)):
        assert got.shape == expected.shape
        assert_close(torch.from_numpy(got), torch.from_numpy(expected))


def test_the_unet_export_loses_its_projection_splits(small_eps_export):
    model = read_onnx(small_eps_export).model
    splits = _ops(model).count("Split")
    assert splits > 0  # the attention blocks' qkv.chunk(3) as exported
    rewritten = split_projection_convs(model)
    onnx.checker.check_model(rewritten)
    assert _ops(rewritten).count("Split") == 0
    assert _ops(rewritten).count("Conv") == _ops(model).count("Conv") + 2 * splits
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 1, 8, 8)).astype(np.float32), "t": np.array([0, 7, 19], np.int64)}
    assert_close(torch.from_numpy(_run(rewritten, feeds)[0]), torch.from_numpy(_run(model, feeds)[0]))


def test_names_inputs_and_subgraphs_that_the_pass_must_respect():
    # A name the new weights would take is already used: they take another, and the graph stays valid.
    model = _hand_built()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "ya.part0.weight"))
    model.graph.node.append(helper.make_node("Identity", ["ya.part0.weight"], ["kept"]))
    model.graph.output.append(helper.make_tensor_value_info("kept", TensorProto.FLOAT, [1]))
    rewritten = split_projection_convs(model)
    onnx.checker.check_model(rewritten, full_check=True)
    names = [init.name for init in rewritten.graph.initializer]
    assert len(names) == len(set(names)) and "ya.part0.weight_1" in names
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)}
    for got, expected in zip(_run(rewritten, feeds), _run(model, feeds)):
        assert_close(torch.from_numpy(got), torch.from_numpy(expected))
    # A weight that is also a graph input (a caller may feed another one): that conv is left alone.
    model = _hand_built()
    model.graph.input.append(helper.make_tensor_value_info("wa", TensorProto.FLOAT, [6, 4, 1, 1]))
    assert _ops(split_projection_convs(model)).count("Split") == 3
    # A graph with a subgraph, which may read the fused output by name: returned unchanged.
    model = _hand_built()
    branch = helper.make_graph([helper.make_node("Identity", ["ya"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 6, 5, 5])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    model.graph.node.append(helper.make_node("If", ["flag"], ["branch_out"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2, 6, 5, 5]))
    assert split_projection_convs(model).SerializeToString() == model.SerializeToString()
