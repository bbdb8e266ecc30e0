"""Test-only helpers for the agent: tiny ONNX models (built with onnx.helper — tests may import
onnx, the agent may not), signed bundles, and a small DeviceService over real gRPC."""

from __future__ import annotations

import hashlib
import pathlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from proto import fleet_pb2, fleet_pb2_grpc, signing
from proto.manifest import LayerGroup, Manifest, TensorSpec, Variant, bundle_id_of, sha256_digest

IN_DIM, OUT_DIM = 16, 4
# hidden width of a variant meant to cost far more CPU per inference than the tiny ones: at
# 4096 (82k multiply-adds) the per-call overhead of ~20 us hid it, fp32 measured only ~2x the
# others, and the thermal cap (0.4x the costliest) sometimes excluded nothing. At 65536 it
# measured 5-8x (the tiny variants' CPU time includes onnxruntime's spinning workers) and a CI
# run once still saw no variant under the cap; 262144 (~5M multiply-adds) leaves ~20x.
COSTLY_HIDDEN = 262144


def linear_model_bytes(seed: int, in_dim: int = IN_DIM, out_dim: int = OUT_DIM, hidden: int = 32) -> bytes:
    """input [N, in_dim] -> MatMul -> Add -> Relu -> MatMul -> logits [N, out_dim]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((in_dim, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, out_dim)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        f"tiny{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_dim])],
        initializer=[w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def dequant_model_bytes(seed: int, in_dim: int = IN_DIM, out_dim: int = OUT_DIM) -> bytes:
    """A weight-only quantized layer: int8 weights -> DequantizeLinear (per output channel)
    -> MatMul, same inputs/outputs as the linear model; dequant_reference() is its output."""
    w, scale = _dequant_weights(seed, in_dim, out_dim)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"], axis=1),
         helper.make_node("MatMul", ["input", "w"], ["logits"])],
        f"dq{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_dim])],
        initializer=[numpy_helper.from_array(w, "wq"), numpy_helper.from_array(scale, "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _dequant_weights(seed: int, in_dim: int, out_dim: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(-127, 128, (in_dim, out_dim)).astype(np.int8),
            (rng.random(out_dim) * 0.05 + 0.01).astype(np.float32))


def dequant_reference(seed: int, x: np.ndarray) -> np.ndarray:
    w, scale = _dequant_weights(seed, x.shape[1], OUT_DIM)
    return x @ (w.astype(np.float32) * scale)


@dataclass
class TestBundle:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    publisher_key: bytes
    files: dict[str, bytes]                  # digest -> bytes
    key: object = None

    @property
    def bundle_id(self) -> str:
        return bundle_id_of(self.manifest_bytes)

    def desired(self, deployment_id: str = "dep-1") -> fleet_pb2.DesiredState:
        return fleet_pb2.DesiredState(bundle_id=self.bundle_id, deployment_id=deployment_id,
                                      manifest=self.manifest_bytes, signature=self.signature,
                                      publisher_key=self.publisher_key)

    def file_of(self, variant_id: str) -> bytes:
        return self.files[self.manifest.variant(variant_id).digest]

    def write_dir(self, folder: pathlib.Path) -> pathlib.Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_bytes(self.manifest_bytes)
        (folder / "manifest.sig").write_bytes(self.signature)
        (folder / "publisher.pub").write_bytes(self.publisher_key)
        for v in self.manifest.variants:
            (folder / v.file).write_bytes(self.files[v.digest])
        return folder


def make_bundle(key=None, seeds=(1, 2, 3), version: str = "1", details: dict[str, dict] | None = None,
                models: dict[str, bytes] | None = None, deflate: tuple[str, ...] = ()) -> TestBundle:
    """fp32/int8/int4 variants of the tiny model; `details` and `models` override a variant's
    manifest details and ONNX bytes by variant id; the variants named in `deflate` are stored
    deflated (encoding "zlib"), as the compressor stores sparse ones."""
    import zlib

    key = key or signing.generate_private_key()
    details, models = details or {}, models or {}
    variants, files = [], {}
    specs = [("fp32", 32, 0.95), ("int8", 8, 0.93), ("int4", 4, 0.90)]
    for (vid, bits, quality), seed in zip(specs, seeds):
        data = models.get(vid) or linear_model_bytes(seed)
        storage = {}
        if vid in deflate:
            onnx_bytes, data = data, zlib.compress(data)
            storage = dict(encoding="zlib", decoded_size=len(onnx_bytes), decoded_digest=sha256_digest(onnx_bytes))
        digest = sha256_digest(data)
        files[digest] = data
        variants.append(Variant(id=vid, file=f"model-{vid}.onnx" + (".zlib" if storage else ""), digest=digest,
                                size_bytes=len(data), method="fp32" if bits == 32 else "ptq-static", weight_bits=bits,
                                activation_bits=32 if bits == 32 else 8, quality=quality,
                                layer_groups=(LayerGroup("*", bits, 32),), details=details.get(vid, {}), **storage))
    manifest = Manifest(model="tiny", version=version, quality_metric="accuracy",
                        inputs=(TensorSpec("input", (None, IN_DIM)),),
                        outputs=(TensorSpec("logits", (None, OUT_DIM)),),
                        variants=tuple(variants), created_unix=1.0)
    manifest_bytes = manifest.to_bytes()
    return TestBundle(manifest, manifest_bytes, signing.sign(manifest_bytes, key),
                      signing.public_key_bytes(key), files, key)


# ---------------------------------------------------------------------------------------------
# A small DeviceService: real gRPC over loopback, with knobs to misbehave.
# ---------------------------------------------------------------------------------------------

@dataclass
class FakeFleet:
    tokens: set[str] = field(default_factory=lambda: {"good-token"})
    trusted_keys: list[bytes] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)     # credential -> device_id
    artifacts: dict[str, bytes] = field(default_factory=dict)     # digest -> bytes served
    desired: fleet_pb2.DesiredState | None = None
    chunk_size: int = 1024
    corrupt_chunk_at: int | None = None      # offset of a chunk whose sha256 is wrong
    drop_after_bytes: int | None = None      # abort the first Download after this many bytes
    download_offsets: list[int] = field(default_factory=list)
    received: list[fleet_pb2.AgentMessage] = field(default_factory=list)
    connects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    desired_changed: threading.Condition = field(default_factory=threading.Condition)

    def states(self) -> list[fleet_pb2.ReportedState]:
        with self.lock:
            return [m.state for m in self.received if m.WhichOneof("kind") == "state"]

    def last_state(self) -> fleet_pb2.ReportedState | None:
        states = self.states()
        return states[-1] if states else None

    def kinds(self) -> set[str]:
        with self.lock:
            return {m.WhichOneof("kind") for m in self.received}

    def set_desired(self, desired: fleet_pb2.DesiredState) -> None:
        with self.desired_changed:
            self.desired = desired
            self.desired_changed.notify_all()


class FakeDeviceService(fleet_pb2_grpc.DeviceServiceServicer):
    def __init__(self, fleet: FakeFleet):
        self.fleet = fleet

    def _device(self, context) -> str:
        auth = dict(context.invocation_metadata()).get("authorization", "")
        device = self.fleet.credentials.get(auth.removeprefix("Bearer "))
        if device is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown device credential")
        return device

    def Enroll(self, request, context):
        with self.fleet.lock:
            if request.token not in self.fleet.tokens:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "enrollment token is unknown, used or expired")
            self.fleet.tokens.discard(request.token)
            device_id = f"dev-{len(self.fleet.credentials) + 1}"
            credential = hashlib.sha256(f"{device_id}{time.time()}".encode()).hexdigest()
            self.fleet.credentials[credential] = device_id
        return fleet_pb2.EnrollResponse(device_id=device_id, credential=credential,
                                        trusted_publisher_keys=self.fleet.trusted_keys)

    def Connect(self, request_iterator, context):
        self._device(context)
        with self.fleet.lock:
            self.fleet.connects += 1

        def reader():
            try:
                for message in request_iterator:
                    with self.fleet.lock:
                        self.fleet.received.append(message)
            except grpc.RpcError:
                pass

        threading.Thread(target=reader, daemon=True).start()
        sent = None
        while context.is_active():
            with self.fleet.desired_changed:
                if self.fleet.desired is sent:
                    self.fleet.desired_changed.wait(0.1)
                desired = self.fleet.desired
            if desired is not None and desired is not sent:
                sent = desired
                yield fleet_pb2.ServerMessage(desired=desired)

    def Download(self, request, context):
        self._device(context)
        data = self.fleet.artifacts.get(request.digest)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no artifact {request.digest}")
        with self.fleet.lock:
            self.fleet.download_offsets.append(request.offset)
        offset = request.offset
        while offset < len(data):
            piece = data[offset:offset + self.fleet.chunk_size]
            digest = hashlib.sha256(piece).hexdigest()
            if self.fleet.corrupt_chunk_at == offset:
                digest = "0" * 64
            if self.fleet.drop_after_bytes is not None and offset >= self.fleet.drop_after_bytes:
                self.fleet.drop_after_bytes = None          # only once
                context.abort(grpc.StatusCode.UNAVAILABLE, "simulated connection drop")
            yield fleet_pb2.Chunk(offset=offset, data=piece, sha256=digest, total_size=len(data))
            offset += len(piece)


class FakeServer:
    """Start/stop a FakeDeviceService on a port (the same port can be started again)."""

    def __init__(self, fleet: FakeFleet, port: int):
        self.fleet = fleet
        self.port = port
        self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        fleet_pb2_grpc.add_DeviceServiceServicer_to_server(FakeDeviceService(self.fleet), self.server)
        self.server.add_insecure_port(self.address)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None


def engine_answer(engine: str, path, feeds: dict) -> np.ndarray:
    """The first output the named engine computes on the variant file at `path`, with one
    thread as the agent runs it: what an agent that served the request on that engine
    (its /v1/infer answer names it) must return exactly."""
    if engine == "native":
        import kernels
        from kernels.engine import Model

        kernels.set_num_threads(1)
        model = Model(str(path))
        return model.run(feeds)[model.outputs[0].name]
    assert engine == "onnxruntime", engine
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll with a generous bound; never asserts on how long it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
