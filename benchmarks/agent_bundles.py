"""Real variant bundles for the agent benchmarks: a compressor-written bundle folder, or a
small MLP bundle built here with onnx.helper (fp32, onnxruntime quantize_dynamic int8, and a
narrow fp32 "student"), each with a dynamic batch axis.

Benchmarks may import onnx; the agent itself never does.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from proto.manifest import LayerGroup, Manifest, TensorSpec, Variant, bundle_id_of, decode_variant, sha256_digest


@dataclass
class DirBundle:
    """What Runner and profiling need of an installed bundle: id, manifest, file paths."""

    bundle_id: str
    manifest: Manifest
    path: pathlib.Path

    def variant_path(self, variant_id: str) -> pathlib.Path:
        return self.path / self.manifest.variant(variant_id).model_file


def load_bundle_dir(folder: str | pathlib.Path) -> DirBundle:
    """A bundle folder as `python -m compressor.cli compress --out DIR` writes it (manifest.json
    + ONNX files, sparse ones deflated). File digests are checked and deflated files inflated
    into a temporary folder, as the agent store would install them; the signature is the agent
    store's business."""
    import tempfile

    folder = pathlib.Path(folder)
    data = (folder / "manifest.json").read_bytes()
    manifest = Manifest.from_bytes(data)
    installed = folder
    if any(v.encoding for v in manifest.variants):
        installed = pathlib.Path(tempfile.mkdtemp(prefix="edgefleet-bundle-"))
    for v in manifest.variants:
        blob = (folder / v.file).read_bytes()
        got = sha256_digest(blob)
        if got != v.digest:
            raise ValueError(f"{v.file}: digest {got} does not match the manifest's {v.digest}")
        if installed != folder:
            (installed / v.model_file).write_bytes(decode_variant(v, blob))
    return DirBundle(bundle_id_of(data), manifest, installed)


def _mlp(seed: int, in_dim: int, hidden: int, out_dim: int, layers: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev, width = [], [], "input", in_dim
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        prev, width = f"r{i}", hidden
    wo = (rng.standard_normal((width, out_dim)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(wo, "wo"))
    nodes.append(helper.make_node("MatMul", [prev, "wo"], ["logits"]))
    graph = helper.make_graph(nodes, f"mlp{hidden}", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_dim])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_dim])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_mlp_bundle(folder: str | pathlib.Path, in_dim: int = 256, hidden: int = 1024, small_hidden: int = 256,
                     out_dim: int = 10, layers: int = 2) -> DirBundle:
    """fp32 (hidden wide), int8 (onnxruntime quantize_dynamic of fp32) and a narrow fp32 student."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)      # quantize_dynamic's "consider pre-processing" hint

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = _mlp(0, in_dim, hidden, out_dim, layers)
    (folder / "fp32.onnx").write_bytes(fp32.SerializeToString())
    quantize_dynamic(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    (folder / "student.onnx").write_bytes(_mlp(1, in_dim, small_hidden, out_dim, layers).SerializeToString())
    variants = []
    for vid, bits, quality, method in (("fp32", 32, 0.95, "fp32"), ("int8", 8, 0.94, "ptq-dynamic"),
                                       ("student", 32, 0.90, "kd-student")):
        data = (folder / f"{vid}.onnx").read_bytes()
        variants.append(Variant(id=vid, file=f"{vid}.onnx", digest=sha256_digest(data), size_bytes=len(data),
                                method=method, weight_bits=bits, activation_bits=32 if bits == 32 else 8,
                                quality=quality, layer_groups=(LayerGroup("*", bits, 32),)))
    manifest = Manifest(model="bench-mlp", version="1", quality_metric="accuracy",
                        inputs=(TensorSpec("input", (None, in_dim)),), outputs=(TensorSpec("logits", (None, out_dim)),),
                        variants=tuple(variants), created_unix=1.0)
    data = manifest.to_bytes()
    (folder / "manifest.json").write_bytes(data)
    return DirBundle(bundle_id_of(data), manifest, folder)
