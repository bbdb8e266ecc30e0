"""Transformer ops on the kernels' nn family (kernels/csrc/nn), and the lowering patterns that
produce them:

- LayerNormalization over the trailing axes -> LayerNorm; an Add whose only reader is that
  LayerNormalization (the residual connection) is fused into it (`layernorm+add`);
- Gelu (exact, approximate="none") and the Erf form x * 0.5 * (1 + Erf(x / sqrt 2)) -> Gelu;
  a lone Erf -> Erf;
- Softmax over the last axis -> Softmax;
- MatMul with a constant weight followed by Add(constant [N] bias) -> one Dense with the bias in
  the GEMM epilogue (lower.py's _dense calls bias_after);
- the attention block of a BERT-style export
      Q, K, V [B, S, H*D] -> Reshape [B, S, H, D] -> Transpose (Q, V: 0 2 1 3; K: 0 2 3 1)
      MatMul(Q, K) [-> Mul / Div by a scalar] [-> Add(mask)] -> Softmax(-1) -> MatMul(., V)
      -> Transpose(0 2 1 3) -> Reshape [B, S, H*D]
  -> Attention: one kernel call per batch and head, no transposed copies. When Q, K and V are
  three qd8 Dense ops on the same input, they become one Dense with the weights concatenated
  (the per-row activation quantization is shared, so each column computes exactly what it
  did alone) and the attention reads Q, K and V at column offsets of its output.

Each op's `ref` is the numpy definition (for the attention: the original ONNX nodes run one by
one), and `bind` falls back to it when the shapes a plan resolves do not fit the kernel (e.g.
a mask that varies per head).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from kernels import _kernels
from kernels.engine import irops
from kernels.engine.graph import Node
from kernels.engine.irops import F32, IROp
from kernels.engine.ops import OPS

HAVE_NN = hasattr(_kernels, "attention")


def _scalar_const(lw, name: str) -> float | None:
    v = lw.consts.get(name)
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return None
    return float(v.reshape(-1)[0])


def _trailing(x_shape, axis: int) -> int:
    return axis + len(x_shape) if axis < 0 else axis


def bias_after(lw, name: str, n: int):
    """(bias [N] float32, the Add node) when `name` (a float GEMM output [..., N]) is read only
    by an Add of a constant 1-D [N] vector; else (None, None)."""
    add = lw.only_consumer(name)
    if add is None or add.op_type != "Add" or name in lw.qparams:
        return None, None
    other = _other(add, name)
    b = lw.consts.get(other) if other else None
    if b is None or b.dtype.kind != "f" or b.shape != (n,):
        return None, None
    return np.ascontiguousarray(b, F32), add


# ----------------------------------------------------------------------------- layer norm

class LayerNorm(IROp):
    """y = LayerNormalization(x (+ res), gamma, beta) over axes [axis, rank)."""

    def __init__(self, name, inputs, outputs, node: Node, residual: bool):
        super().__init__(name, inputs, outputs)
        self.node, self.residual = node, residual
        self.kind = "layernorm+add" if residual else "layernorm"
        self.eps = F32(node.attrs.get("epsilon", 1e-5))
        self.axis = int(node.attrs.get("axis", -1))

    def _parts(self, xs):
        if self.residual:
            a, b, gamma, beta = (list(xs) + [None])[:4]
        else:
            a, gamma, beta = (list(xs) + [None])[:3]
            b = None
        return a, b, gamma, beta

    def ref(self, *xs):
        a, b, gamma, beta = self._parts(xs)
        x = a if b is None else a + b
        return OPS["LayerNormalization"](self.node, x, gamma, beta)

    def bind(self, ins, outs):
        a, b, gamma, beta = self._parts(ins)
        y = outs[0]
        if a.dtype != F32 or y.dtype != F32 or (b is not None and b.dtype != F32) or a.ndim == 0:
            return super().bind(ins, outs)
        ax = _trailing(a.shape, self.axis)
        inner = a.shape[ax:]
        n = int(np.prod(inner, dtype=np.int64))
        if n == 0 or y.shape != a.shape:
            return super().bind(ins, outs)
        try:
            g = np.ascontiguousarray(np.broadcast_to(gamma, inner), F32).reshape(-1)
            be = None if beta is None else np.ascontiguousarray(np.broadcast_to(beta, inner), F32).reshape(-1)
        except ValueError:
            return super().bind(ins, outs)
        x2, y2 = a.reshape(-1, n), y.reshape(-1, n)
        if b is None:
            return [partial(_kernels.layernorm, x2, None, g, be, float(self.eps), y2)]
        if b.shape == a.shape:
            return [partial(_kernels.layernorm, x2, b.reshape(-1, n), g, be, float(self.eps), y2)]
        if np.broadcast_shapes(a.shape, b.shape) != a.shape:
            return super().bind(ins, outs)
        # a broadcast residual (e.g. a constant): add into the output, normalize in place
        return [partial(np.add, a, b, out=y), partial(_kernels.layernorm, y2, None, g, be, float(self.eps), y2)]


def lower_layernorm(lw, node: Node, residual: Node | None = None) -> bool:
    if not HAVE_NN or any(y for y in node.outputs[1:]):       # Mean / InvStdDev outputs wanted
        return False
    if node.attrs.get("stash_type", 1) != 1:
        return False
    x = node.inputs[0]
    if residual is not None:
        ins = list(residual.inputs[:2]) + list(node.inputs[1:3])
    else:
        ins = [x] + list(node.inputs[1:3])
    if any(i in lw.qparams for i in ins if i) or node.inputs[1] not in lw.consts:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in lw.consts:
        return False
    while len(ins) > (4 if residual is not None else 3) or (ins and not ins[-1]):
        ins.pop()
    lw.ops.append(LayerNorm(node.name, ins, [node.outputs[0]], node, residual is not None))
    return True


def lower_residual_add(lw, add: Node) -> bool:
    """Add -> LayerNormalization (its only reader) => one LayerNorm with the Add fused."""
    ln = lw.only_consumer(add.outputs[0])
    if ln is None or ln.op_type != "LayerNormalization" or ln.inputs[0] != add.outputs[0]:
        return False
    if any(x in lw.consts for x in add.inputs):
        return False                          # a bias, not a residual: leave it to the usual path
    if lower_layernorm(lw, ln, residual=add):
        lw._fuse([ln])
        return True
    return False


# ----------------------------------------------------------------------------- elementwise

class Unary(IROp):
    """Gelu (exact) or Erf on the nn kernels, elementwise over any shape."""

    def __init__(self, name, inputs, outputs, which: str, nodes: list[Node]):
        super().__init__(name, inputs, outputs)
        self.which, self.nodes = which, nodes
        self.kind = which

    def ref(self, x):
        if self.which == "gelu":
            return OPS["Gelu"](Node("Gelu", self.name, [], [], {}), x)
        return OPS["Erf"](self.nodes[0], x)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        if x.dtype != F32 or y.shape != x.shape:
            return super().bind(ins, outs)
        fn = _kernels.gelu if self.which == "gelu" else _kernels.erf
        return [partial(fn, x.reshape(-1), y.reshape(-1))]


def lower_gelu(lw, node: Node) -> bool:
    if not HAVE_NN or node.attrs.get("approximate", "none") not in ("none", b"none") or node.inputs[0] in lw.qparams:
        return False
    lw.ops.append(Unary(node.name, [node.inputs[0]], [node.outputs[0]], "gelu", [node]))
    return True


def _other(node: Node, name: str) -> str | None:
    if len(node.inputs) != 2 or name not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def lower_erf(lw, node: Node) -> bool:
    if not HAVE_NN or node.inputs[0] in lw.qparams:
        return False
    lw.ops.append(Unary(node.name, [node.inputs[0]], [node.outputs[0]], "erf", [node]))
    return True


def _match_erf_gelu(lw, erf: Node):
    pre = lw.producer.get(erf.inputs[0])
    if pre is None or pre.op_type not in ("Div", "Mul") or lw.only_consumer(pre.outputs[0]) is not erf:
        return None
    x = pre.inputs[0]
    c = _scalar_const(lw, pre.inputs[1])
    if c is None or x in lw.consts:
        return None
    want = np.sqrt(2.0) if pre.op_type == "Div" else 1 / np.sqrt(2.0)
    if abs(c - want) > 1e-6 * want:
        return None
    add = lw.only_consumer(erf.outputs[0])
    if add is None or add.op_type != "Add" or _scalar_const(lw, _other(add, erf.outputs[0]) or "") != 1.0:
        return None
    m1 = lw.only_consumer(add.outputs[0])
    if m1 is None or m1.op_type != "Mul":
        return None
    m2 = lw.only_consumer(m1.outputs[0])
    if m2 is None or m2.op_type != "Mul":
        return None
    o1, o2 = _other(m1, add.outputs[0]), _other(m2, m1.outputs[0])
    if not ((o1 == x and _scalar_const(lw, o2 or "") == 0.5) or (o2 == x and _scalar_const(lw, o1 or "") == 0.5)):
        return None
    # x itself may have other readers; the intermediate values must not
    return x, m2.outputs[0], [pre, erf, add, m1, m2]


# ----------------------------------------------------------------------------- softmax

class Softmax(IROp):
    kind = "softmax"

    def __init__(self, name, inputs, outputs, node: Node):
        super().__init__(name, inputs, outputs)
        self.node = node

    def ref(self, x):
        return OPS["Softmax"](self.node, x)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        axis = int(self.node.attrs.get("axis", -1))
        if x.dtype != F32 or x.ndim == 0 or _trailing(x.shape, axis) != x.ndim - 1 or x.shape[-1] == 0:
            return super().bind(ins, outs)
        n = x.shape[-1]
        return [partial(_kernels.softmax, x.reshape(-1, n), y.reshape(-1, n))]


def lower_softmax(lw, node: Node) -> bool:
    if not HAVE_NN or node.inputs[0] in lw.qparams:
        return False
    lw.ops.append(Softmax(node.name, [node.inputs[0]], [node.outputs[0]], node))
    return True


# ----------------------------------------------------------------------------- attention

class Attention(IROp):
    """softmax(Q K^T * scale + mask) V per batch and head; Q, K, V read at column offsets of
    [B, S, W] tensors (one merged QKV tensor, or three), output [B, S, H*D]."""

    kind = "attention"

    def __init__(self, name, inputs, outputs, nodes: list[Node], roles: dict, scale: float):
        super().__init__(name, inputs, outputs)
        self.nodes, self.roles, self.scale = nodes, roles, scale
        self.offsets = {"q": 0, "k": 0, "v": 0}     # set when Q/K/V come from one merged tensor
        self.merged: tuple[str, list[int]] | None = None

    def _env(self, xs) -> dict:
        env = dict(zip(self.inputs, xs))
        if self.merged is not None:
            qkv = env[self.merged[0]]
            cuts = np.cumsum([0] + self.merged[1])
            for i, role in enumerate("qkv"):
                env[self.roles[role]] = np.ascontiguousarray(qkv[..., cuts[i]:cuts[i + 1]])
        return env

    def ref(self, *xs):
        env = self._env(xs)
        for node in self.nodes:
            outs = OPS[node.op_type](node, *[env[i] if i else None for i in node.inputs])
            env.update(zip(node.outputs, outs))
        return (env[self.nodes[-1].outputs[0]],)

    def _geometry(self, env):
        """(heads, head_dim) if every reshape splits [B, S, H*D] into [B, S, H, D] the same way."""
        hd = None
        for role in "qkv":
            x = env[self.roles[role]]
            reshape = self.roles[role + "_reshape"]
            if x.ndim != 3:
                return None
            target = OPS["Reshape"](reshape, np.broadcast_to(F32(0), x.shape), env[reshape.inputs[1]])[0].shape
            if len(target) != 4 or target[:2] != x.shape[:2] or target[2] * target[3] != x.shape[2]:
                return None
            if hd not in (None, target[2:]):
                return None
            hd = target[2:]
        return hd

    def bind(self, ins, outs):
        env = self._env(ins)
        y = outs[0]
        geo = self._geometry(env)
        if geo is None or any(env[self.roles[r]].dtype != F32 for r in "qkv"):
            return super().bind(ins, outs)
        heads, d = geo
        q, k, v = (env[self.roles[r]] for r in "qkv")
        b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
        if y.shape != (b, sq, heads * d) or k.shape[0] != b or v.shape[:2] != (b, skv):
            return super().bind(ins, outs)
        mask = env.get(self.roles.get("mask", ""), None) if self.roles.get("mask") else None
        m2 = None
        if mask is not None:
            if mask.dtype != F32 or mask.ndim > 4:
                return super().bind(ins, outs)
            m4 = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
            if m4.shape[1:3] != (1, 1) or m4.shape[0] not in (1, b) or m4.shape[3] not in (1, skv):
                return super().bind(ins, outs)
            if m4.shape[3] != skv:
                return super().bind(ins, outs)     # a mask broadcast along keys: rare, left to numpy
            m2 = mask.reshape(m4.shape[0], skv)
        if self.merged is not None:
            qkv = ins[self.inputs.index(self.merged[0])]
            o = np.cumsum([0] + self.merged[1])
            return [partial(_kernels.attention, qkv, qkv, qkv, m2, y, heads, d, self.scale,
                            int(o[0]), int(o[1]), int(o[2]))]
        qi, ki, vi = (ins[self.inputs.index(self.roles[r])] for r in "qkv")
        return [partial(_kernels.attention, qi, ki, vi, m2, y, heads, d, self.scale, 0, 0, 0)]


def _is_transpose(node: Node | None, perm) -> bool:
    return node is not None and node.op_type == "Transpose" and list(node.attrs.get("perm", [])) == list(perm)


def match_attention(lw, mm1: Node):
    """The attention pattern anchored at MatMul(Q^T, K^T) (module docstring), or None."""
    if mm1.op_type != "MatMul" or any(x in lw.consts or x in lw.qparams for x in mm1.inputs):
        return None
    chain: list[Node] = []

    def sole(name: str, op_type: str) -> Node | None:
        nxt = lw.only_consumer(name)
        return nxt if nxt is not None and nxt.op_type == op_type and nxt.inputs[0] == name else None

    def split_heads(name: str, perm) -> tuple[Node, Node] | None:
        t = lw.producer.get(name)
        if not _is_transpose(t, perm) or lw.only_consumer(t.outputs[0]) is None:
            return None
        r = lw.producer.get(t.inputs[0])
        if r is None or r.op_type != "Reshape" or lw.only_consumer(r.outputs[0]) is not t:
            return None
        if r.inputs[0] in lw.consts or r.inputs[0] in lw.qparams:
            return None
        return r, t

    qs, ks = split_heads(mm1.inputs[0], (0, 2, 1, 3)), split_heads(mm1.inputs[1], (0, 2, 3, 1))
    if qs is None or ks is None:
        return None
    cur, scale, mask = mm1.outputs[0], 1.0, None
    nxt = lw.only_consumer(cur)
    scale_node = None
    if nxt is not None and nxt.op_type in ("Mul", "Div") and nxt.inputs[0] == cur:
        c = _scalar_const(lw, nxt.inputs[1])
        if c is None or c == 0.0:
            return None
        scale, scale_node, cur = (c if nxt.op_type == "Mul" else 1.0 / c), nxt, nxt.outputs[0]
        nxt = lw.only_consumer(cur)
    add_node = None
    if nxt is not None and nxt.op_type == "Add":
        mask = _other(nxt, cur)
        if mask is None or mask in lw.qparams:
            return None
        add_node, cur = nxt, nxt.outputs[0]
    sm = sole(cur, "Softmax")
    if sm is None or int(sm.attrs.get("axis", -1)) not in (-1, 3):
        return None
    mm2 = sole(sm.outputs[0], "MatMul")
    if mm2 is None:
        return None
    vs = split_heads(mm2.inputs[1], (0, 2, 1, 3))
    if vs is None:
        return None
    ot = sole(mm2.outputs[0], "Transpose")
    if not _is_transpose(ot, (0, 2, 1, 3)):
        return None
    orr = sole(ot.outputs[0], "Reshape")
    if orr is None:
        return None
    nodes = [qs[0], qs[1], ks[0], ks[1], vs[0], vs[1], mm1] + [n for n in (scale_node, add_node) if n is not None] \
        + [sm, mm2, ot, orr]
    for n in nodes[:-1]:                      # every intermediate value read by the next node only
        if any(y in lw.outputs for y in n.outputs):
            return None
    roles = {"q": qs[0].inputs[0], "k": ks[0].inputs[0], "v": vs[0].inputs[0],
             "q_reshape": qs[0], "k_reshape": ks[0], "v_reshape": vs[0]}
    if mask is not None:
        roles["mask"] = mask
    internal = {y for n in nodes for y in n.outputs}
    inputs: list[str] = []
    for n in nodes:
        for x in n.inputs:
            if x and x not in internal and x not in inputs:
                inputs.append(x)
    return Attention(mm1.name, inputs, [orr.outputs[0]], nodes, roles, scale), nodes


def prematch(lw) -> dict[int, IROp]:
    """Patterns whose first node in graph order is not the one that identifies them: the
    attention block (its Reshape/Transpose nodes precede the MatMul) and the Erf form of GELU
    (the scaling Div precedes the Erf). Returns {id(first node): op}; the other nodes of each
    match are marked fused, and the last node (which depends on all the others, so every input
    of the match exists by then) emits the op when the lowering reaches it."""
    anchored: dict[int, IROp] = {}
    if not HAVE_NN:
        return anchored
    for idx, node in enumerate(lw.g.nodes):
        if idx in lw.done or id(node) in lw._fused:
            continue
        if node.op_type == "MatMul":
            found = match_attention(lw, node)
            if found is not None:
                op, nodes = found
        elif node.op_type == "Erf" and node.inputs[0] not in lw.qparams:
            gelu = _match_erf_gelu(lw, node)
            if gelu is None:
                continue
            x, out, nodes = gelu
            op = Unary(node.name, [x], [out], "gelu", nodes)
            found = op
        else:
            continue
        if found is None:
            continue
        anchored[id(nodes[-1])] = op
        lw._fuse(nodes[:-1])
    return anchored


# ----------------------------------------------------------------------------- merged Q/K/V

def merge_qkv(ops: list[IROp]) -> list[IROp]:
    """Three qd8 Dense ops reading the same tensor whose outputs feed only one Attention as
    its Q, K and V -> one Dense over the concatenated weights (exact: the activation rows
    are quantized once either way, and each output column is the same integer dot product)."""
    readers: dict[str, list[IROp]] = {}
    for op in ops:
        for x in op.inputs:
            if x:
                readers.setdefault(x, []).append(op)
    producer = {y: op for op in ops for y in op.outputs if y}
    replace: dict[int, IROp] = {}
    drop: set[int] = set()
    for op in ops:
        if not isinstance(op, Attention) or op.merged is not None:
            continue
        names = [op.roles[r] for r in "qkv"]
        dense = [producer.get(n) for n in names]
        if len(set(names)) != 3 or not all(isinstance(d, irops.Dense) and isinstance(d.weights, irops.QD8Weights)
                                           and d.clamp == irops.NO_CLAMP for d in dense):
            continue
        if len({d.inputs[0] for d in dense}) != 1 or any(readers.get(n) != [op] for n in names):
            continue
        w = [d.weights for d in dense]
        bias = None
        if any(x.bias is not None for x in w):
            bias = np.concatenate([x.bias if x.bias is not None else np.zeros(x.n, F32) for x in w])
        merged_w = irops.QD8Weights(np.concatenate([x.q for x in w]), np.concatenate([x.scale for x in w]),
                                    np.concatenate([x.zp for x in w]), bias)
        qkv = names[0] + "#qkv"
        replace[id(dense[0])] = irops.Dense(dense[0].name + "+qkv", [dense[0].inputs[0]], [qkv], merged_w)
        drop.update(id(d) for d in dense[1:])
        op.merged = (qkv, [x.n for x in w])
        op.inputs = [qkv] + [x for x in op.inputs if x not in names]
    if not replace:
        return ops
    # the merged Dense goes where the first of the three was; all three read the same input,
    # which exists by then, and the attention comes after all three.
    return [replace.get(id(op), op) for op in ops if id(op) not in drop]
