"""compress(): PyTorch model + configs -> measured, signed bundle of ONNX variants."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from torch import nn

from compressor.bundle import write_bundle
from compressor.configs import VariantConfig
from compressor.context import Artifact, CompressContext
from compressor.errors import CompressionError, UnsupportedLayerError
from compressor.evaluate import LatencyConfig, Measurement, accuracy_fn, measure
from compressor.export import export_onnx
from compressor.registry import handler_for
from proto.manifest import Manifest, TensorSpec, Variant, sha256_digest

# Leaf modules compress() knows how to export and quantize. Anything else with parameters
# is refused up front with its module path, instead of failing deep in a graph rewrite.
SUPPORTED_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


@dataclass
class MeasuredVariant:
    variant: Variant
    artifact: Artifact
    measurement: Measurement


@dataclass
class BundleResult:
    manifest: Manifest
    files: dict[str, bytes]
    out_dir: str | None = None
    bundle_id: str | None = None
    variants: list[MeasuredVariant] = field(default_factory=list)

    def table(self) -> list[dict]:
        """One row per variant: what to print."""
        return [{"id": v.id, "method": v.method, "bits": v.bits_label,
                 "sparsity": v.sparsity, "size_bytes": v.size_bytes, "quality": v.quality,
                 "p50_ms": v.latency_p50_seconds * 1e3, "p95_ms": v.latency_p95_seconds * 1e3,
                 "parent": v.parent}
                for v in self.manifest.variants]


def check_layers(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        if any(True for _ in mod.children()):
            continue
        has_params = any(True for _ in mod.parameters(recurse=False))
        if has_params and not isinstance(mod, SUPPORTED_WEIGHT_LAYERS):
            raise UnsupportedLayerError(
                f"layer {name!r} is a {type(mod).__name__}, which compress() does not support; "
                f"supported layers with weights: "
                f"{', '.join(c.__name__ for c in SUPPORTED_WEIGHT_LAYERS)}")


def _load_key(signing_key):
    if signing_key is None or hasattr(signing_key, "sign"):
        return signing_key
    from proto.signing import load_or_create_private_key
    return load_or_create_private_key(signing_key)


def _specs(values) -> tuple[TensorSpec, ...]:
    out = []
    for v in values:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim)
        out.append(TensorSpec(v.name, dims, _dtype_name(v.type.tensor_type.elem_type)))
    return tuple(out)


def compress(model: nn.Module, configs: Sequence[VariantConfig], *,
             calib_data: np.ndarray | None = None,
             eval_data: tuple[np.ndarray, np.ndarray] | None = None,
             eval_fn: Callable | None = None, quality_metric: str = "accuracy",
             train_data: tuple[np.ndarray, np.ndarray] | None = None,
             example_input: np.ndarray | None = None,
             out_dir: str | os.PathLike | None = None, signing_key=None,
             model_name: str = "model", version: str = "1", description: str = "",
             latency: LatencyConfig = LatencyConfig(),
             progress: Callable[[str], None] | None = None) -> BundleResult:
    """Build one variant per config, measure each through onnxruntime, and (if `out_dir`)
    write the signed bundle.

    Args:
        model: a trained PyTorch model (put in eval mode here).
        configs: e.g. [Fp32Config(), Int8StaticConfig(), Int4WeightOnlyConfig(group_size=32)].
        calib_data: input samples (N, ...) for static quantization / data-aware methods.
        eval_data: (x, y) held-out data; quality = top-1 accuracy. Or give `eval_fn`.
        eval_fn: fn(onnxruntime.InferenceSession) -> float, higher is better.
        train_data: (x, y) for techniques that fine-tune (pruning, distillation, QAT).
        example_input: one input batch for export; defaults to calib/eval data.
        out_dir, signing_key: where to write the bundle and the Ed25519 key (object or path).
    """
    if not configs:
        raise CompressionError("compress() needs at least one variant config")
    ids = [c.id for c in configs]
    if len(set(ids)) != len(ids):
        raise CompressionError(f"variant ids must be unique, got {ids}")
    if out_dir is not None and signing_key is None:
        raise CompressionError("writing a bundle needs signing_key (a key or a key file path)")
    key = _load_key(signing_key)
    say = progress or (lambda _m: None)
    ctx = prepare_context(model, calib_data, eval_data, eval_fn, train_data, example_input, say)
    fp32, example_input = ctx.fp32_onnx, ctx.example_input
    results: list[MeasuredVariant] = []
    files: dict[str, bytes] = {}
    for cfg in configs:
        say(f"building {cfg.id} ({type(cfg).__name__})")
        mv, data = build_and_measure(cfg, ctx, example_input, latency)
        files[mv.variant.file] = data
        results.append(mv)
    manifest = make_manifest(fp32, [r.variant for r in results], model_name, version,
                             quality_metric, description)
    result = BundleResult(manifest=manifest, files=files, variants=results)
    if out_dir is not None:
        say(f"writing bundle to {out_dir}")
        result.bundle_id = write_bundle(out_dir, manifest, files, key)
        result.out_dir = os.fspath(out_dir)
    return result


def prepare_context(model: nn.Module, calib_data, eval_data, eval_fn, train_data, example_input,
                    say: Callable[[str], None]) -> CompressContext:
    """Check the inputs, export the fp32 graph once; shared by compress() and search()."""
    if eval_fn is None:
        if eval_data is None:
            raise CompressionError("compress() needs eval_data=(x, y) or eval_fn to measure quality")
        eval_fn = accuracy_fn(*eval_data)
    if example_input is None:
        for src in (calib_data, None if eval_data is None else eval_data[0]):
            if src is not None and len(src):
                example_input = np.asarray(src[:2], np.float32)
                break
    if example_input is None:
        raise CompressionError("compress() needs example_input (or calib/eval data) to export")
    model = model.eval()
    fp32 = export_fp32(model, example_input, say)
    return CompressContext(model=model, fp32_onnx=fp32, example_input=_example(example_input),
                           calib_data=calib_data, train_data=train_data, eval_fn=eval_fn)


def build_and_measure(cfg: VariantConfig, ctx: CompressContext, example_input: np.ndarray,
                      latency: LatencyConfig) -> tuple[MeasuredVariant, bytes]:
    """Run the config's handler, measure the result; return it and the ONNX bytes."""
    art = handler_for(cfg)(cfg, ctx)
    ctx.built[cfg.id] = art
    m = measure(art.onnx, ctx.eval_fn, example_input, latency, art.session_config)
    data = art.onnx.SerializeToString()
    return MeasuredVariant(variant_of(cfg.id, art, m, data, _config_json(cfg)), art, m), data


def variant_of(vid: str, art: Artifact, m: Measurement, data: bytes, config: dict) -> Variant:
    return Variant(id=vid, file=f"{vid}.onnx", digest=sha256_digest(data), size_bytes=len(data),
                   method=art.method, weight_bits=art.weight_bits,
                   activation_bits=art.activation_bits, quality=round(m.quality, 6),
                   latency_p50_seconds=m.latency_p50_seconds,
                   latency_p95_seconds=m.latency_p95_seconds, memory_bytes=m.memory_bytes,
                   sparsity=round(float(art.sparsity), 6), sparsity_pattern=art.sparsity_pattern,
                   parent=art.parent, layer_groups=art.layer_groups,
                   details={**art.details, "config": config,
                            **({"onnxruntime_session_config": art.session_config}
                               if art.session_config else {})})


def make_manifest(fp32, variants: list[Variant], model_name: str, version: str,
                  quality_metric: str, description: str = "") -> Manifest:
    return Manifest(model=model_name, version=version, quality_metric=quality_metric,
                    inputs=_specs(fp32.graph.input), outputs=_specs(fp32.graph.output),
                    variants=tuple(variants), created_unix=time.time(), description=description)


def _config_json(cfg: VariantConfig) -> dict:
    from compressor.configs import config_to_dict
    return config_to_dict(cfg)


# -- models with their own exporter (added for compressor.transformer) ---------------------

def export_fp32(model: nn.Module, example_input, say: Callable[[str], None]):
    """The fp32 graph: `model.export_onnx(example_input)` if the model has one (models with
    several or integer inputs, e.g. compressor.models.minilm's sentence encoder, whose
    layers the graph rewrites check op by op), else check_layers + export_onnx."""
    own = getattr(model, "export_onnx", None)
    if callable(own):
        say("exporting fp32 ONNX (the model's own exporter)")
        return own(example_input)
    check_layers(model)
    say("exporting fp32 ONNX")
    return export_onnx(model, example_input)


def _example(example_input):
    """A dict {input name: array} stays a dict (multi-input models), else an array."""
    return example_input if isinstance(example_input, dict) else np.asarray(example_input)


def _dtype_name(elem_type: int) -> str:
    import onnx
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # an elem type numpy has no name for (bfloat16, float8...)
        return "float32"


# -- handlers registered here rather than in compressor/__init__ (QAT, mixed precision) ----
import compressor.quant.mixed  # noqa: E402,F401  MixedPrecisionConfig
import compressor.quant.qat  # noqa: E402,F401  Int8QatConfig
