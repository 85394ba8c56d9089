"""The graphs ONNX Runtime samples with, composed from an ε-model export and a plan.

* the step (:func:`build_step_model`, built in memory by :class:`fastddpm.OrtSampler`): the ε-model
  followed by the plan's one update (``fastddpm.kernels.update_rows``) — x̂_0 = X0_FROM_X·x +
  X0_FROM_EPS·ε̂ and x_next = X·x + EPS·ε̂ + X0·x̂_0 + NOISE·noise + Σ_j HISTORY_j·history_j. Inputs ``x``, ``t``,
  ``coef`` (the step's NUM_ROWS coefficients) and either ``noise`` (a plan that draws noise) or
  ``history1`` … (a multistep plan's earlier x̂_0, newest first); outputs ``x_next`` and ``x0``.
* the whole sampler (:func:`build_sampler_model`): that step as the body of one ONNX ``Loop`` over the
  plan's timesteps and coefficient table, baked into the file; inputs ``x_T`` and (for stochastic plans)
  ``noise`` (S×B×C×H×W, one slice per step), output ``sample``.
"""

from __future__ import annotations

import copy

import numpy as np

from .._version import __version__
from ..kernels.update_rows import HISTORY_ROWS, NUM_ROWS, Row
from ..solvers import StepPlan, push_history
from .metadata import OnnxModelError

__all__ = ["build_step_model", "build_sampler_model", "OPSET", "step_inputs"]

OPSET = 18
_RESERVED = {"x", "t", "coef", "noise", "history1", "history2", "history3", "x_next", "x0", "x_T", "sample"}


def _eps_nodes(eps_model, prefix: str, x_name: str, t_name: str):
    """The ε-model's nodes renamed into a larger graph: its inputs wired to ``x_name``/``t_name``, every
    value it computes prefixed. Initializers keep their names (they stay in the outer graph). Returns
    (nodes, name of ε)."""
    graph = eps_model.graph
    for node in graph.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise OnnxModelError("the ε-model has control flow (If/Loop/Scan); it cannot be nested in a step graph")
    # Its weights keep their names in the composed graphs: none may shadow a name those graphs use.
    clash = sorted(i.name for i in graph.initializer if i.name in _RESERVED or i.name.startswith("fastddpm/"))
    if clash:
        raise OnnxModelError(f"the ε-model has initializers named {clash}, which the step and sampler graphs use")
    rename = {"x": x_name, "t": t_name}
    for node in graph.node:
        for out in node.output:
            if out:
                rename[out] = prefix + out
    nodes = []
    for node in graph.node:
        new = copy.deepcopy(node)
        new.name = prefix + node.name
        new.input[:] = [rename.get(n, n) for n in node.input]
        new.output[:] = [rename.get(n, n) for n in node.output]
        nodes.append(new)
    return nodes, rename[graph.output[0].name]

def step_inputs(plan: StepPlan) -> list[str]:
    """The step graph's inputs after x, t and coef: ``noise`` or the plan's x̂_0 histories."""
    return ["noise"] if plan.stochastic else [f"history{j}" for j in range(1, plan.histories + 1)]


def _update_nodes(x: str, eps: str, coef: str, x_next: str, x0: str, prefix: str, noise: str | None,
                  history: list[str]):
    """x̂_0 = X0_FROM_X·x + X0_FROM_EPS·ε and x_next = X·x + EPS·ε + X0·x̂_0 (+ NOISE·noise)
    (+ Σ_j HISTORY_j·history_j),
    each coefficient gathered from ``coef`` (NUM_ROWS,) by its row."""
    from onnx import helper, numpy_helper  # the "onnx" extra

    nodes, initializers = [], []

    def term(row: Row, value: str) -> str:
        weight, out, index = f"{prefix}{row.name}", f"{prefix}{row.name}_term", f"{prefix}row{int(row)}"
        # Only the rows this plan uses get an index constant: ORT warns about unused initializers.
        initializers.append(numpy_helper.from_array(np.array(int(row), dtype=np.int64), index))
        nodes.append(helper.make_node("Gather", [coef, index], [weight], axis=0))
        nodes.append(helper.make_node("Mul", [weight, value], [out]))
        return out

    def total(terms: list[str], out: str) -> None:
        acc = terms[0]
        for i, other in enumerate(terms[1:], 1):
            name = out if i == len(terms) - 1 else f"{out}_partial{i}"
            nodes.append(helper.make_node("Add", [acc, other], [name]))
            acc = name

    total([term(Row.X0_FROM_X, x), term(Row.X0_FROM_EPS, eps)], x0)
    terms = [term(Row.X, x), term(Row.EPS, eps), term(Row.X0, x0)]
    if noise is not None:
        terms.append(term(Row.NOISE, noise))
    terms += [term(row, value) for row, value in zip(HISTORY_ROWS, history)]
    total(terms, x_next)
    return nodes, initializers


def _float_image(name: str, dims: tuple):
    from onnx import TensorProto, helper  # the "onnx" extra

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _image_dims(eps_model) -> tuple:
    """The ε-model's x dimensions (a fixed channel count, symbolic or fixed batch and size), for the
    composed graphs' image inputs and outputs."""
    dims = eps_model.graph.input[0].type.tensor_type.shape.dim
    names = ("batch", "channels", "height", "width")
    if len(dims) != 4:
        return names
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or n) for d, n in zip(dims, names))


def _finish(graph, eps_model):
    from onnx import helper  # the "onnx" extra

    opsets = {o.domain: o.version for o in eps_model.opset_import}
    opsets[""] = max(opsets.get("", OPSET), OPSET)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="fastddpm", producer_version=__version__)
    model.ir_version = eps_model.ir_version
    model.functions.extend(eps_model.functions)
    return model


def build_step_model(eps_model, plan: StepPlan):
    """The one-step graph ONNX Runtime iterates for ``plan`` (see the module docstring)."""
    from onnx import TensorProto, helper  # the "onnx" extra

    prefix = "fastddpm/"
    extra = step_inputs(plan)
    nodes, eps = _eps_nodes(eps_model, prefix + "eps/", "x", "t")
    noise = "noise" if plan.stochastic else None
    update, row_indices = _update_nodes("x", eps, "coef", "x_next", "x0", prefix, noise, [] if noise else extra)
    nodes += update
    dims = _image_dims(eps_model)
    graph = helper.make_graph(
        nodes, "fastddpm_step",
        inputs=[_float_image("x", dims), helper.make_tensor_value_info("t", TensorProto.INT64, [dims[0]]),
                helper.make_tensor_value_info("coef", TensorProto.FLOAT, [NUM_ROWS])]
        + [_float_image(name, dims) for name in extra],
        outputs=[_float_image("x_next", dims), _float_image("x0", dims)],
        initializer=list(eps_model.graph.initializer) + row_indices,
    )
    return _finish(graph, eps_model)


def build_sampler_model(eps_model, plan: StepPlan):
    """The whole sampler as one ONNX Loop (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper  # the "onnx" extra

    p = "fastddpm/"
    body_nodes = [
        helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"]),
        helper.make_node("Gather", [p + "timesteps", p + "k"], [p + "t_k"], axis=0),
        helper.make_node("Shape", [p + "x"], [p + "batch"], start=0, end=1),
        helper.make_node("Expand", [p + "t_k", p + "batch"], [p + "t"]),
        helper.make_node("Gather", [p + "coefs", p + "k"], [p + "coef"], axis=0),
    ]
    noise = None
    if plan.stochastic:
        body_nodes.append(helper.make_node("Gather", ["noise", p + "k"], [p + "noise_k"], axis=0))
        noise = p + "noise_k"
    history = [f"{p}history{j}" for j in range(1, plan.histories + 1)]
    eps_nodes, eps = _eps_nodes(eps_model, p + "eps/", p + "x", p + "t")
    body_nodes += eps_nodes
    update, row_indices = _update_nodes(p + "x", eps, p + "coef", p + "x_next", p + "x0", p, noise, history)
    body_nodes += update
    # The histories the next step reads: this step's x̂_0 first, the oldest dropped (Identity nodes give
    # each loop-carried output its own name).
    pushed, _ = push_history(history, p + "x0")
    history_out = [f"{name}_out" for name in history]
    body_nodes += [helper.make_node("Identity", [value], [out]) for value, out in zip(pushed, history_out)]
    untyped = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    body = helper.make_graph(
        body_nodes, "fastddpm_step",
        inputs=[helper.make_tensor_value_info(p + "k", TensorProto.INT64, []),
                helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, [])]
        + [untyped(name) for name in [p + "x", *history]],
        outputs=[helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, [])]
        + [untyped(name) for name in [p + "x_next", *history_out]],
        # The weights live in the body: ORT folds and fuses only what it knows to be constant there, and
        # left in the outer graph they cost 40% per step (measured on the Fashion U-Net, 2-core CPU:
        # 579 ms/step with outer-scope weights, 411 inside; the step graph alone: 417).
        initializer=list(eps_model.graph.initializer) + row_indices + [
            numpy_helper.from_array(np.asarray(plan.timesteps, dtype=np.int64), p + "timesteps"),
            numpy_helper.from_array(np.ascontiguousarray(plan.coefs.T, dtype=np.float32), p + "coefs"),
        ],
    )
    outer_nodes = [
        helper.make_node("Shape", ["x_T"], [p + "shape"]),
        helper.make_node("ConstantOfShape", [p + "shape"], [p + "zeros"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Loop", [p + "trip_count", p + "true", "x_T"] + [p + "zeros"] * plan.histories,
                         [p + "x_final"] + [f"{name}_final" for name in history], body=body),
        # Clipped to [-1, 1] except where x is NaN or ±inf: Clip alone turns +inf into 1 (and the spec leaves
        # its NaN undefined), which would hide a diverged sample from the check after the graph.
        helper.make_node("Clip", [p + "x_final", p + "minus_one", p + "one"], [p + "clipped"]),
        helper.make_node("IsInf", [p + "x_final"], [p + "is_inf"]),
        helper.make_node("IsNaN", [p + "x_final"], [p + "is_nan"]),
        helper.make_node("Or", [p + "is_inf", p + "is_nan"], [p + "not_finite"]),
        helper.make_node("Where", [p + "not_finite", p + "x_final", p + "clipped"], ["sample"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(plan.steps, dtype=np.int64), p + "trip_count"),
        numpy_helper.from_array(np.array(True), p + "true"),
        numpy_helper.from_array(np.array(-1.0, dtype=np.float32), p + "minus_one"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), p + "one"),
    ]
    dims = _image_dims(eps_model)
    inputs = [_float_image("x_T", dims)]
    if plan.stochastic:
        inputs.append(_float_image("noise", (plan.steps, *dims)))
    graph = helper.make_graph(outer_nodes, "fastddpm_sampler", inputs=inputs, outputs=[_float_image("sample", dims)],
                              initializer=initializers)
    return _finish(graph, eps_model)
