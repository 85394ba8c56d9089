"""Graph rewrites applied to an export in memory before a runtime compiles it (the file on disk is unchanged).

:func:`split_projection_convs`: the attention blocks compute q, k and v with one 1×1 convolution and split
its output in three (``to_qkv(x).chunk(3, dim=1)``). OpenVINO's CPU plugin runs that channel ``Split`` with
its reference kernel: measured on a 2-core AMD EPYC (Zen 3), Fashion U-Net at batch 64, 25% of a forward
(182 of 734 ms in nodes), the first split alone 147 ms. A ``Slice`` per output is fused back into the same
slow split. Three convolutions, each with its third of the weights, compute the same numbers with no
split at all (each output channel of a convolution depends only on its own filter).
"""

from __future__ import annotations

import numpy as np

__all__ = ["split_projection_convs"]


def split_projection_convs(model):
    """A copy of ``model`` (an ``onnx.ModelProto``) where every ``Split`` along channels of a plain ``Conv``
    output (constant weights and bias that are not graph inputs, ``group`` 1, the Split its only consumer)
    becomes one ``Conv`` per part, each with its slice of the filters. Anything else is left as it is, and a
    graph with subgraphs (Loop, If) is returned unchanged."""
    import onnx  # the "onnx" extra
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's proto is not changed
    graph = model.graph
    # A subgraph (Loop, If) may read a value without naming it in a top-level node's inputs: such a graph
    # is left whole (the ε-model exports this is for have none).
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return model
    graph_inputs = {value.name for value in graph.input}  # an initializer listed as an input can be overridden
    taken = set(graph_inputs) | {init.name for init in graph.initializer} | \
        {name for node in graph.node for name in list(node.output) + [node.name]}
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {out.name for out in graph.output}

    # Nodes are keyed by their first output (unique in an ONNX graph; names may be empty).
    replaced: dict[str, list] = {}  # Split -> the convolutions that replace it
    removed: set[str] = set()  # the fused convolutions
    unused: set[str] = set()  # their weights and biases, when nothing else reads them
    for split in graph.node:
        if split.op_type != "Split" or not split.input:
            continue
        conv = producer.get(split.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(split.input[0]) != 1 or \
                split.input[0] in graph_outputs or conv.input[1] not in initializers or \
                any(name in graph_inputs for name in [*conv.input[1:], *split.input[1:]]):  # a caller may feed them
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        split_attributes = {a.name: helper.get_attribute_value(a) for a in split.attribute}
        if attributes.get("group", 1) != 1 or split_attributes.get("axis", 0) not in (1, -3):
            continue
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        if weight.ndim != 4 or (has_bias and conv.input[2] not in initializers):
            continue
        bias = numpy_helper.to_array(initializers[conv.input[2]]) if has_bias else None
        sizes = _split_sizes(split, split_attributes, initializers, weight.shape[0])
        if sizes is None:
            continue
        parts, start, base = [], 0, conv.output[0]  # output names are unique; node names need not be
        for index, (size, out) in enumerate(zip(sizes, split.output)):
            inputs = [conv.input[0], _fresh(f"{base}.part{index}.weight", taken)]
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[start : start + size]), inputs[1]))
            if bias is not None:
                inputs.append(_fresh(f"{base}.part{index}.bias", taken))
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(bias[start : start + size]), inputs[2]))
            parts.append(helper.make_node("Conv", inputs, [out], name=_fresh(f"{base}.part{index}", taken), **attributes))
            start += size
        replaced[split.output[0]] = parts
        removed.add(conv.output[0])
        unused.update(name for name in conv.input[1:] if name and consumers.get(name) == 1)

    if not replaced:
        return model
    nodes = []
    for node in graph.node:
        if node.op_type == "Conv" and node.output[0] in removed:
            continue
        nodes.extend(replaced.get(node.output[0], [node]) if node.op_type == "Split" else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name not in unused or init.name in graph_outputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_info = [info for info in graph.value_info if info.name not in removed]  # the fused outputs are gone
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return model


def _split_sizes(split, attributes, initializers, channels: int) -> list[int] | None:
    """The part sizes of a channel Split of ``channels`` channels, or None when they are not constant."""
    from onnx import numpy_helper  # the "onnx" extra

    if len(split.input) > 1 and split.input[1]:
        if split.input[1] not in initializers:
            return None
        sizes = [int(v) for v in numpy_helper.to_array(initializers[split.input[1]]).reshape(-1)]
    elif "split" in attributes:  # opset < 13
        sizes = [int(v) for v in attributes["split"]]
    else:
        parts = attributes.get("num_outputs", len(split.output))
        if parts < 1 or channels % parts:  # an uneven num_outputs split: left alone
            return None
        sizes = [channels // parts] * parts
    if len(sizes) != len(split.output) or sum(sizes) != channels or min(sizes) < 1:
        return None
    return sizes


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``… if the graph already uses it; recorded as taken."""
    candidate, suffix = name, 0
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    taken.add(candidate)
    return candidate
