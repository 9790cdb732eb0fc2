"""Closed-form upper bounds: per-operation L2 Lipschitz constants composed over the graph (MATH §4).

Every tensor t gets a bound L(t) on the Lipschitz constant of x -> t(x) (x the model input):
L(input) = 1, static tensors 0, a one-input operation multiplies by its constant, a sum of
two tensors adds (L_a + L_b: residual y = x + f(x) gives (1 + L_f) L(x)), a concatenation
takes sqrt(L_a^2 + L_b^2) (DenseNet: sqrt(1 + L_f^2)). A product of two input-dependent
tensors (attention, gating) has no global constant: the bound becomes None with the reason.
A Softmax/LogSoftmax producing the output is excluded (the bound is on the logit map), and
lambda_max(F) <= L^2 / 2.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx

from .. import ops
from ..model.loader import load_model
from ..model.spec import logit_output
from ..ops.elementwise import layernorm_pattern, same_input_pattern
from ..results.bounds import Block, BoundResult, OpBound
from .fold import fold_batchnorm
from .parse import Node, OpGraph, parse

INF = math.inf




def _non_finite(c: np.ndarray | None) -> bool:
    return c is not None and c.dtype.kind in "fc" and not bool(np.all(np.isfinite(c)))


class _Propagator:
    """Propagates per-tensor Lipschitz bounds. ``structural``: weights count as 1, no norm is computed.

    A structural pass finds in milliseconds whether the output is unbounded for any weights
    (gating, attention, division by activations): infinity only arises from the structure.
    """

    def __init__(self, g: OpGraph, structural: bool = False) -> None:
        self.g = g
        self.structural = structural
        self.L: dict[str, float] = {g.input_name: 1.0}
        self.reason: dict[str, str] = {}
        self.ops: list[OpBound] = []

    # -- helpers
    def lip(self, t: str) -> float:
        if not self.g.is_var(t):
            return 0.0
        return self.L.get(t, INF)

    def assign(self, node: Node, value: float, how: str, factor: float | None, reason: str | None = None) -> None:
        """Record ``node``'s outputs' bound ``value`` (``factor``: its own constant, None where it is not one)."""
        for out in node.outputs:
            if out:
                self.L[out] = value
                if not math.isfinite(value):
                    self.reason[out] = reason or self._inherited_reason(node) or f"{node.op} '{node.name}' is unbounded"
        self.ops.append(OpBound(node.name, node.op, factor if factor is None or math.isfinite(factor) else None, how))

    def _inherited_reason(self, node: Node) -> str | None:
        for i in node.inputs:
            if i in self.reason:
                return self.reason[i]
        return None

    def unbounded(self, node: Node, reason: str) -> None:
        """No global constant at ``node`` (an unbounded input's reason is kept)."""
        inherited = self._inherited_reason(node)
        self.assign(node, INF, reason, None, inherited or reason)

    def scale(self, node: Node, factor: float, how: str, src: str | None = None) -> None:
        """A one-input operation: its bound is ``factor`` times its (first varying) input's."""
        src = src if src is not None else self.g.var_inputs(node)[0]
        self.assign(node, factor * self.lip(src), how, factor)

    # -- the rules: each operator's ``lipschitz`` hook in the operator table (fimaudit.ops)
    def visit(self, node: Node) -> None:
        g = self.g
        if not g.var_inputs(node) or node.op == "Constant":
            return
        op = node.op
        if node.domain not in ("", "ai.onnx"):
            return self.unbounded(node, f"operator '{node.domain}:{op}' has no known Lipschitz constant")
        entry = ops.entry(op)
        if entry is not None and entry.checks_weights:
            bad = [i for i in node.inputs if i and not g.is_var(i) and _non_finite(g.consts.get(i))]
            if bad:
                return self.unbounded(node, f"{op} '{node.name}' has NaN or Inf in its weights ('{bad[0]}')")
        rule = entry.rule("lipschitz") if entry is not None else None
        if rule is None:
            return self.unbounded(node, f"operator '{op}' (node '{node.name}') has no known Lipschitz constant")
        return rule(self, node)


# ------------------------------------------------------------------------- blocks
def detect_blocks(g: OpGraph, prop: _Propagator) -> list[Block]:
    """Recognise residual, dense, attention, gating, conv-stack and MLP-head blocks."""
    blocks: list[Block] = []
    covered: set[str] = set()
    order = {t: n.index for n in g.nodes for t in n.outputs}
    order[g.input_name] = -1

    def ratio(out: str, inp: str) -> float | None:
        lo, li = prop.lip(out), prop.lip(inp)
        if not math.isfinite(lo) or not math.isfinite(li) or li == 0:
            return None
        return lo / li

    def span(start: str, end_node: Node) -> list[str]:
        anc = set()
        for i in g.var_inputs(end_node):
            anc |= g.ancestors(i)
        return [n.name for n in g.nodes if order.get(start, -1) < n.index <= end_node.index and any(o in anc or o in end_node.outputs for o in n.outputs)]

    attn = [n for n in g.nodes if n.op == "MatMul" and len(g.var_inputs(n)) == 2]
    softmax_attn = [n for n in g.nodes if n.op == "Softmax" and any(
        c.op == "MatMul" and len(g.var_inputs(c)) == 2 for c in g.consumers.get(n.outputs[0], []))]
    for k, sm in enumerate(softmax_attn):
        blocks.append(Block(f"attention{k}", "transformer-attention", None, (sm.name,),
                            "softmax(Q K^T / sqrt(d)) V: not globally Lipschitz", "unbounded",
                            "softmax(Q K^T / sqrt(d)) V multiplies two input-dependent tensors: no global constant"))
        covered.add(sm.name)
    lns = [n for n in g.nodes if n.op == "LayerNormalization"]
    ln_decomp = [n for n in g.nodes if n.op == "Div" and layernorm_pattern(g, n.inputs[0], n.inputs[1]) is not None]
    for n in lns + ln_decomp:
        blocks.append(Block(n.name, "layernorm", ratio(n.outputs[0], n.inputs[0]), (n.name,),
                            "global bound from epsilon (decomposed form)" if n.op == "Div" else "global bound from epsilon",
                            span=(n.inputs[0], n.outputs[0])))
    for n in g.nodes:
        var = g.var_inputs(n)
        if n.op == "Add" and len(var) == 2:
            a, b = var
            anc_a, anc_b = g.ancestors(a), g.ancestors(b)
            common = anc_a & anc_b
            if not common:
                continue
            start = max(common, key=lambda t: order.get(t, -1))
            if softmax_attn and any(sm.index > order.get(start, -1) and sm.index < n.index for sm in softmax_attn):
                kind = "transformer-residual (attention)"
            elif any(g.producer.get(t) is not None and g.producer[t].op in ("Gemm", "MatMul") for t in (anc_a | anc_b) - g.ancestors(start)) and not any(
                g.producer.get(t) is not None and g.producer[t].op == "Conv" for t in (anc_a | anc_b) - g.ancestors(start)):
                kind = "transformer-residual (mlp)" if (lns or ln_decomp) else "residual"
            else:
                shortcut = "identity" if start in (a, b) else "projection"
                kind = f"resnet-residual ({shortcut} shortcut)"
            nodes = tuple(span(start, n))
            covered.update(nodes)
            blocks.append(Block(n.name, kind, ratio(n.outputs[0], start), nodes, f"from '{start}'",
                                span=(start, n.outputs[0])))
        elif n.op == "Concat" and len(var) >= 2:
            ancs = [g.ancestors(v) for v in var]
            if any(var[i] in ancs[j] for i in range(len(var)) for j in range(len(var)) if i != j):
                start = [v for v in var if any(v in ancs[j] for j in range(len(var)) if var[j] != v)][0]
                nodes = tuple(span(start, n))
                covered.update(nodes)
                blocks.append(Block(n.name, "densenet-layer", ratio(n.outputs[0], start), nodes,
                                    "concatenation of the input and a branch", span=(start, n.outputs[0])))
        elif n.op == "Mul" and len(var) == 2 and same_input_pattern(g, *n.inputs[:2]) is None:
            if any(g.producer.get(i) is not None and g.producer[i].op in ("Sigmoid", "HardSigmoid") for i in var):
                blocks.append(Block(n.name, "squeeze-excitation", None, (n.name,), "x * sigmoid(h(x)): no global constant",
                                    "unbounded", "x * sigmoid(h(x)) multiplies two input-dependent tensors: no global constant"))
                covered.add(n.name)
    # Conv stacks (VGG stages): Conv/BN/activation runs up to a pooling, outside other blocks.
    stage: list[Node] = []
    stage_in: str | None = None
    k = 0

    def close(end: Node | None) -> None:
        nonlocal stage, stage_in, k
        if stage and any(s.op == "Conv" for s in stage) and stage_in is not None:
            last = end or stage[-1]
            blocks.append(Block(f"conv_stage{k}", "vgg-conv-stack", ratio(last.outputs[0], stage_in),
                                tuple(s.name for s in stage) + ((end.name,) if end else ()),
                                f"{sum(s.op == 'Conv' for s in stage)} conv layers", span=(stage_in, last.outputs[0])))
            k += 1
        stage, stage_in = [], None

    for n in g.nodes:
        if n.name in covered or not g.var_inputs(n):
            close(None)
            continue
        if n.op in ("Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "HardSwish"):
            if not stage:
                stage_in = g.var_inputs(n)[0]
            stage.append(n)
        elif n.op in ("MaxPool", "AveragePool") and stage:
            close(n)
        else:
            close(None)
    close(None)
    # MLP head: the Gemm/MatMul-with-weights chain feeding the output.
    head: list[Node] = []
    node = g.producer.get(g.output_name)
    while node is not None and node.op in ("Gemm", "MatMul", "Relu", "Tanh", "Sigmoid", "Flatten", "Reshape", "Softmax",
                                           "LogSoftmax", "Gelu", "Identity", "Dropout", "Add"):
        if node.op in ("MatMul",) and len(g.var_inputs(node)) == 2:
            break
        if node.op == "Add" and len(g.var_inputs(node)) == 2:
            break
        head.append(node)
        var = g.var_inputs(node)
        node = g.producer.get(var[0]) if var else None
    dense = [h for h in head if h.op in ("Gemm", "MatMul")]
    if dense and g.var_inputs(head[-1]):
        first = head[-1]
        head_out = head[0].inputs[0] if head[0].op in ("Softmax", "LogSoftmax") else head[0].outputs[0]
        blocks.append(Block("head", "mlp-head", ratio(head_out, g.var_inputs(first)[0]),
                            tuple(h.name for h in reversed(head)), f"{len(dense)} dense layers",
                            span=(g.var_inputs(first)[0], head_out)))
    del attn
    index = {n.name: n.index for n in g.nodes}
    return sorted(blocks, key=lambda b: max((index.get(n, -1) for n in b.nodes), default=-1))


def label_blocks(blocks: list[Block], prop: "_Propagator", model_reason: str | None) -> list[Block]:
    """Each block bounded, unbounded (with what in it has no global constant) or not computed (with why).

    The structural pass (weights counted as 1) tells a block that is unbounded itself (its output unbounded while
    its input is not) from one whose constant was simply not measured: the model had no finite bound, so no weight
    norm was computed, or the block's input is already unbounded upstream, so no ratio to it means anything."""
    out = []
    intrinsic = [b for b in blocks if b.status == "unbounded"]  # attention, gating: decided where recognised
    for b in blocks:
        if b.status:
            out.append(b)
            continue
        if b.lipschitz is not None:
            out.append(replace(b, status="bounded", reason=None))
            continue
        inner = next((x for x in intrinsic if set(x.nodes) <= set(b.nodes)), None)
        if inner is not None:
            out.append(replace(b, status="unbounded", reason=f"contains {inner.name}: {inner.reason}"))
            continue
        if b.span is None:
            out.append(replace(b, status="not computed", reason="its input and output tensors are unknown"))
            continue
        inp, outp = b.span
        li, lo = prop.lip(inp), prop.lip(outp)
        if not math.isfinite(li):
            first = next((x.name for x in out if x.status == "unbounded"), None)
            out.append(replace(b, status="not computed",
                               reason="its input is already unbounded upstream" + (f" (after {first})" if first else "")
                                      + ": no ratio to it is measured"))
        elif not math.isfinite(lo):
            out.append(replace(b, status="unbounded", reason=prop.reason.get(outp) or "a part of it has no known "
                                                                                      "Lipschitz constant"))
        elif li == 0:
            out.append(replace(b, status="not computed", reason="its input does not depend on the model input"))
        elif prop.structural:
            out.append(replace(b, status="not computed",
                               reason="bounded in structure; its weight norms were not computed because the model as "
                                      "a whole has no finite bound (see the model's reason)"))
        else:
            out.append(replace(b, status="not computed", reason="no ratio of its output to its input bound"))
    return out


def classify(blocks: list[Block], g: OpGraph) -> str | None:
    kinds = {b.kind.split(" ")[0] for b in blocks}
    if "transformer-attention" in kinds:
        return "transformer"
    if "densenet-layer" in kinds:
        return "densenet"
    if "resnet-residual" in kinds:
        return "resnet"
    if "vgg-conv-stack" in kinds or any(n.op == "Conv" for n in g.nodes):
        return "vgg"
    if any(n.op in ("Gemm", "MatMul") for n in g.nodes):
        return "mlp"
    return None


def compute_bounds(model_path: str, input_name: str | None = None, output_name: str | None = None,
                   input_shape: tuple[int, ...] | None = None) -> BoundResult:
    """Load (validated) and bound a model file."""
    m = load_model(model_path, input_name=input_name, output_name=output_name, input_shape=input_shape, device="cpu")
    return bounds_from_proto(m.proto, m.info.input.name, m.info.output.name, m.sample_shape, str(model_path))


def bounds_job(subject, domain: tuple[float, float] | None = None, show_ops: bool = False) -> BoundResult:
    """``fimaudit bounds``: the closed-form bound of ``subject``'s graph; with ``domain`` (LO, HI in model-input units)
    also every logit's interval over that whole input box (IBP, fimaudit verify's engine). ``show_ops`` asks the
    renderer for the per-operation table."""
    from dataclasses import replace

    result = bounds_from_proto(subject.proto, subject.info.input.name, subject.info.output.name, subject.sample_shape,
                               subject.options.model)
    over = None
    if domain is not None:
        from ..verify import domain_bounds

        z = domain_bounds(subject.model(), domain)
        over = {"input_range": list(domain), "method": "ibp", "units": "model-input units",
                "logits_lower": [float(v) for v in z.lo.reshape(-1)], "logits_upper": [float(v) for v in z.hi.reshape(-1)]}
    return replace(result, show_ops=show_ops, domain_bounds=over)


def bounds_from_proto(proto: onnx.ModelProto, input_name: str, output_name: str, sample_shape: tuple[int, ...],
                      label: str = "") -> BoundResult:
    folded = fold_batchnorm(proto)
    n_folded = sum(n.op_type == "BatchNormalization" for n in proto.graph.node) - sum(
        n.op_type == "BatchNormalization" for n in folded.graph.node)
    g = parse(folded, input_name, output_name, tuple(sample_shape))
    walk = logit_output({t: (n.op, n.inputs) for t, n in g.producer.items()}, output_name)
    target = walk.logits
    excluded = walk.final_op if walk.logits != output_name else None
    # Decide "no global bound" (gating, attention, ...) from the structure before computing any norm.
    prop = _Propagator(g, structural=True)
    for node in g.nodes:
        prop.visit(node)
    if math.isfinite(prop.lip(target)):
        prop = _Propagator(g)
        for node in g.nodes:
            prop.visit(node)
    lip = prop.lip(target)
    reason = None
    if not math.isfinite(lip):
        reason = prop.reason.get(target) or "a part of the graph has no known Lipschitz constant"
    blocks = detect_blocks(g, prop)
    if prop.structural:  # weights were not measured: no block constant means anything
        blocks = [replace(b, lipschitz=None) for b in blocks]
    blocks = label_blocks(blocks, prop, reason)
    notes = []
    if excluded:
        notes.append(f"the final {excluded} is excluded: the bound is on the logit map")
    if n_folded:
        notes.append(f"{n_folded} BatchNormalization layer(s) folded into the preceding Conv/Gemm")
    if any(o.op == "LayerNormalization" for o in g.nodes):
        notes.append("LayerNorm is bounded globally by max|gamma|/sqrt(eps), far above its typical local slope")
    finite = math.isfinite(lip)
    return BoundResult(
        model=label,
        lipschitz=lip if finite else None,
        fim_upper=0.5 * lip * lip if finite else None,
        reason=reason,
        family=classify(blocks, g),
        blocks=tuple(blocks),
        ops=tuple(prop.ops),
        excluded_output_op=excluded,
        notes=tuple(notes),
    )

