"""ONNX bytes -> a checked, plain-Python graph (nodes, numpy initializers, input/output specs).

Parsing uses only google.protobuf and the schema subset in onnx_subset.proto (no `onnx`
import: the agent must stay light). Everything that could make a later stage misbehave is
checked here and reported as InvalidModel / UnsupportedGraph with the offending name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from kernels.engine import onnx_subset_pb2 as pb
from kernels.engine.errors import InvalidModel, UnsupportedGraph

T = pb.TensorProto

#: ONNX data_type -> numpy dtype for the types the engine can hold. INT4/UINT4 unpack to
#: int8/uint8 (one value per byte).
DTYPES: dict[int, np.dtype] = {
    T.FLOAT: np.dtype(np.float32), T.DOUBLE: np.dtype(np.float64), T.FLOAT16: np.dtype(np.float16),
    T.UINT8: np.dtype(np.uint8), T.INT8: np.dtype(np.int8), T.UINT16: np.dtype(np.uint16),
    T.INT16: np.dtype(np.int16), T.INT32: np.dtype(np.int32), T.INT64: np.dtype(np.int64),
    T.UINT32: np.dtype(np.uint32), T.UINT64: np.dtype(np.uint64), T.BOOL: np.dtype(np.bool_),
    T.INT4: np.dtype(np.int8), T.UINT4: np.dtype(np.uint8),
}
DTYPE_NAMES = {v: k for k, v in T.DataType.items()}

#: Graph input dtypes the engine accepts from callers.
INPUT_DTYPES = {T.FLOAT, T.INT64, T.INT32, T.BOOL, T.UINT8, T.INT8}

MAX_OPSET = 23  # newest default-domain opset whose semantics the ops here follow


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list[str]        # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}"


@dataclass(frozen=True)
class ValueSpec:
    name: str
    shape: tuple            # ints, or str/None for symbolic/unknown axes
    dtype: np.dtype


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[ValueSpec]
    outputs: list[ValueSpec]
    opset: int
    int4_initializers: dict[str, tuple[int, bool]] = field(default_factory=dict)  # name -> (4, signed)


def _dtype_name(code: int) -> str:
    return DTYPE_NAMES.get(code, f"data_type {code}")


def tensor_to_numpy(t: pb.TensorProto, where: str) -> np.ndarray:
    """Decode one TensorProto (raw_data or typed fields); checks the byte count against dims."""
    if t.data_location == T.EXTERNAL or len(t.external_data):
        raise UnsupportedGraph(f"{where}: tensor {t.name!r} uses external data (not supported)")
    code = t.data_type
    if code not in DTYPES:
        raise UnsupportedGraph(f"{where}: tensor {t.name!r} has unsupported dtype {_dtype_name(code)}")
    dims = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in dims):
        raise InvalidModel(f"{where}: tensor {t.name!r} has negative dims {dims}")
    count = int(np.prod(dims, dtype=np.int64))
    dtype = DTYPES[code]
    if code in (T.INT4, T.UINT4):
        if t.HasField("raw_data"):
            packed = np.frombuffer(t.raw_data, np.uint8)
        else:
            packed = np.asarray(t.int32_data, np.int64).astype(np.uint8)
        if packed.size != (count + 1) // 2:
            raise InvalidModel(f"{where}: int4 tensor {t.name!r} holds {packed.size} bytes, "
                               f"dims {dims} need {(count + 1) // 2}")
        nib = np.empty(packed.size * 2, np.uint8)
        nib[0::2] = packed & 0x0F
        nib[1::2] = packed >> 4
        nib = nib[:count]
        if code == T.INT4:
            nib = (nib.astype(np.int8) ^ 8) - 8      # sign-extend 4-bit two's complement
        return nib.astype(dtype).reshape(dims)
    if t.HasField("raw_data"):
        raw = t.raw_data
        if len(raw) != count * dtype.itemsize:
            raise InvalidModel(f"{where}: tensor {t.name!r} holds {len(raw)} bytes, "
                               f"dims {dims} x {dtype} need {count * dtype.itemsize} (truncated file?)")
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if code == T.FLOAT:
        values = np.asarray(t.float_data, np.float32)
    elif code == T.DOUBLE:
        values = np.asarray(t.double_data, np.float64)
    elif code == T.INT64:
        values = np.asarray(t.int64_data, np.int64)
    elif code in (T.UINT32, T.UINT64):
        values = np.asarray(t.uint64_data, np.uint64)
    elif code == T.FLOAT16:
        values = np.asarray(t.int32_data, np.uint16).view(np.float16)
    else:
        values = np.asarray(t.int32_data, np.int64)
    if values.size != count:
        raise InvalidModel(f"{where}: tensor {t.name!r} holds {values.size} values, dims {dims} need {count}")
    return values.astype(dtype).reshape(dims)


def _attribute(a: pb.AttributeProto, where: str):
    A = pb.AttributeProto
    if a.ref_attr_name:
        raise UnsupportedGraph(f"{where}: attribute {a.name!r} refers to a function attribute")
    kind = a.type
    if kind == A.FLOAT:
        return float(a.f)
    if kind == A.INT:
        return int(a.i)
    if kind == A.STRING:
        return a.s.decode("utf-8", "replace")
    if kind == A.TENSOR:
        return tensor_to_numpy(a.t, where)
    if kind == A.FLOATS:
        return [float(v) for v in a.floats]
    if kind == A.INTS:
        return [int(v) for v in a.ints]
    if kind == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if kind in (A.GRAPH, A.GRAPHS):
        raise UnsupportedGraph(f"{where}: subgraph attribute {a.name!r} (control flow) is not supported")
    raise UnsupportedGraph(f"{where}: attribute {a.name!r} of type {A.AttributeType.Name(kind) if kind in A.AttributeType.values() else kind} is not supported")


def _value_spec(v: pb.ValueInfoProto, what: str) -> ValueSpec:
    if not v.name:
        raise InvalidModel(f"graph {what} without a name")
    if not v.type.HasField("tensor_type"):
        raise UnsupportedGraph(f"graph {what} {v.name!r} is not a tensor")
    tt = v.type.tensor_type
    if tt.elem_type not in DTYPES:
        raise UnsupportedGraph(f"graph {what} {v.name!r} has unsupported dtype {_dtype_name(tt.elem_type)}")
    if what == "input" and tt.elem_type not in INPUT_DTYPES:
        raise UnsupportedGraph(f"graph input {v.name!r} has unsupported dtype {_dtype_name(tt.elem_type)}")
    shape = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            kind = d.WhichOneof("value")
            shape.append(int(d.dim_value) if kind == "dim_value" else (d.dim_param or None))
    return ValueSpec(v.name, tuple(shape), DTYPES[tt.elem_type])


def read_model_bytes(source) -> bytes:
    """bytes / bytearray / memoryview as they are; str or PathLike is read from disk."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InvalidModel(f"cannot read ONNX file {os.fspath(source)!r}: {exc}") from exc
    raise TypeError(f"expected ONNX bytes or a path, got {type(source).__name__}")


def parse_model(data: bytes) -> Graph:
    """Parse and check one ONNX model. Raises InvalidModel / UnsupportedGraph."""
    if not data:
        raise InvalidModel("empty ONNX file")
    model = pb.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModel(f"not a valid ONNX file (truncated or corrupt): {exc}") from exc
    if not model.HasField("graph") or not len(model.graph.node):
        raise InvalidModel("ONNX model has no graph nodes (truncated or not an ONNX file)")
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset is None:
        raise InvalidModel("ONNX model declares no default-domain opset (truncated file?)")
    if opset > MAX_OPSET:
        raise UnsupportedGraph(f"opset {opset} is newer than the engine knows ({MAX_OPSET})")
    g = model.graph
    if len(g.sparse_initializer):
        raise UnsupportedGraph("sparse_initializer is not supported")

    initializers: dict[str, np.ndarray] = {}
    int4: dict[str, tuple[int, bool]] = {}
    for t in g.initializer:
        if not t.name:
            raise InvalidModel("initializer without a name")
        initializers[t.name] = tensor_to_numpy(t, "initializer")
        if t.data_type in (T.INT4, T.UINT4):
            int4[t.name] = (4, t.data_type == T.INT4)
    inputs = [_value_spec(v, "input") for v in g.input if v.name not in initializers]
    outputs = [_value_spec(v, "output") for v in g.output]
    if not outputs:
        raise InvalidModel("ONNX graph declares no outputs")

    defined = set(initializers) | {v.name for v in inputs}
    nodes: list[Node] = []
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        if not n.op_type:
            raise InvalidModel(f"node #{i} has no op_type")
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedGraph(f"{n.op_type} node {name!r} is in domain {n.domain!r}; only the default "
                                   "ONNX domain is supported", [(f"{n.domain}.{n.op_type}", name)])
        for x in n.input:
            if x and x not in defined:
                raise InvalidModel(f"{n.op_type} node {name!r} reads {x!r}, which nothing defines before it "
                                   "(truncated, corrupt or unsorted graph)")
        attrs = {a.name: _attribute(a, f"{n.op_type} node {name!r}") for a in n.attribute}
        for y in n.output:
            if y and y in defined:
                raise InvalidModel(f"{n.op_type} node {name!r} redefines tensor {y!r}")
            defined.add(y)
        nodes.append(Node(n.op_type, name, list(n.input), list(n.output), attrs))
    for v in outputs:
        if v.name not in defined:
            raise InvalidModel(f"graph output {v.name!r} is never computed (truncated or corrupt file?)")
    return Graph(nodes, initializers, inputs, outputs, opset, int4)
