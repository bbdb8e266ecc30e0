"""Quantization-aware training (QAT) that exports the same int8 QDQ graph as static PTQ.

The fake quantization goes exactly where the static rewrite (quant/qdq.py) puts its
QuantizeLinear/DequantizeLinear pairs, so what the model is trained against is what
onnxruntime runs:

1. The fp32 ONNX graph decides the places: `activation_plan` names the activation tensors
   the rewrite quantizes. Tensors a value-moving op (MaxPool, Reshape...) makes from an
   already quantized tensor reuse its scale, so re-quantizing them is the identity and they
   get no fake-quant of their own.
2. Each such tensor is found in the PyTorch model by value: the model is traced with
   torch.fx, every node's output is recorded on a few calibration samples and compared with
   the tensor captured from the ONNX graph (the last matching node wins, so a chain of
   Identity modules is quantized after its end). A torch.ao FakeQuantize (uint8, per tensor,
   MovingAverageMinMaxObserver, straight-through estimator) is inserted after that node.
3. Every Conv/Linear weight the rewrite quantizes gets a parametrization that fake-quantizes
   it with torch.fake_quantize_per_channel_affine (symmetric [-127, 127], scale = absmax/127
   of the current weight: the formula of reference.quantize_symmetric_ref, bit for bit).
4. Activation observers start from the calibration ranges (the ranges static PTQ would use),
   so training starts at the PTQ model; then compressor.train's loop fine-tunes on the
   user's data while the observers follow the batches.
5. Export: observers frozen, the trained fp32 weights exported as before, and the QDQ rewrite
   run with the learned ranges (`quantize_static_qdq(..., ranges=)`).

BatchNorm: models with ConvBNAct blocks (MobileNetV2) are folded before QAT, as export
folds them, so the weights being fake-quantized are the ones exported. Other BatchNorm
layers train as usual and are not folded into the fake-quantized weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize

from compressor.configs import Int8QatConfig
from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.errors import CompressionError, UnsupportedLayerError
from compressor.export import export_onnx
from compressor.quant import reference as ref
from compressor.quant.calibration import (CalibrationMethod, capture_tensors,
                                          check_calibration_data, compute_ranges)
from compressor.quant.graph import PASSTHROUGH_OPS, Graph
from compressor.quant.qdq import QdqOptions, activation_plan, quantize_static_qdq
from compressor.registry import register_variant_handler
from compressor.train import TrainConfig, train

WEIGHT_BITS = 8
ACT_DTYPE = "uint8"
PROBE_SAMPLES = 16            # calibration samples used to find ONNX tensors in the torch graph
MATCH_RTOL = 1e-4             # relative (to the tensor's absmax) tolerance of that match


class WeightFakeQuant(nn.Module):
    """Symmetric signed fake quantization of a weight (a parametrization of `weight`).

    The scale is recomputed from the current weight on every call (absmax / qmax per output
    channel along axis 0, or per tensor), exactly as the export quantizes the final weight,
    so training sees the rounding the int8 file will have. The gradient is the
    straight-through estimator of torch.fake_quantize_*: identity inside the range (the
    whole weight, since the range is its absmax).
    """

    def __init__(self, per_channel: bool = True, bits: int = WEIGHT_BITS):
        super().__init__()
        self.per_channel = per_channel
        self.qmax = ref.symmetric_qmax(bits)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        a = w.detach().abs()
        absmax = a.amax(dim=tuple(range(1, w.ndim))) if self.per_channel else a.max()
        return torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        if self.per_channel:
            zp = torch.zeros(scale.shape, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -self.qmax, self.qmax)
        return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros((), dtype=torch.int32),
                                                     -self.qmax, self.qmax)


def activation_fake_quant(momentum: float = 0.01) -> FakeQuantize:
    """uint8 asymmetric per-tensor fake quantization with a moving-average min/max observer
    (the activation format of the static rewrite)."""
    qmin, qmax = ref.INT_RANGES[ACT_DTYPE]
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=qmin, quant_max=qmax,
                        dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                        averaging_constant=momentum)


def set_range(fq: FakeQuantize, lo: float, hi: float) -> None:
    """Set the observer's range and the quantizer's scale/zero point from (lo, hi), with the
    export's own formula (reference.affine_params_ref), so torch and onnxruntime agree."""
    obs = fq.activation_post_process
    obs.min_val.copy_(torch.tensor(float(lo)))
    obs.max_val.copy_(torch.tensor(float(hi)))
    scale, zp = ref.affine_params_ref(lo, hi, ACT_DTYPE)
    fq.scale.resize_(1).copy_(torch.tensor([float(scale)]))
    fq.zero_point.resize_(1).copy_(torch.tensor([int(zp)], dtype=torch.int32))


def fold_like_export(model: nn.Module) -> nn.Module:
    """A copy folded the way export_onnx folds it (ConvBNAct BatchNorms into their convs)."""
    fold = getattr(model, "fold_for_export", None)
    if fold is not None:
        return fold()
    from compressor.models.mobilenet_v2 import ConvBNAct, fold_batchnorm
    if any(isinstance(m, ConvBNAct) for m in model.modules()):
        return fold_batchnorm(model)
    return copy.deepcopy(model)


@dataclass
class QatModel:
    """A fake-quantized copy of a model, tied to the ONNX tensors it mirrors."""

    module: torch.fx.GraphModule           # what is trained and evaluated (fake quant on)
    base: nn.Module                        # the same parameters, in the original structure
    act_quant: dict[str, FakeQuantize]     # ONNX tensor name -> its fake quantizer
    shared: dict[str, str]                 # ONNX tensor reusing another's scale -> that one
    weights: dict[str, str]                # ONNX weight name -> module path
    plain_template: nn.Module              # `base` before parametrization (for fp32_model)
    per_channel: bool = True
    details: dict = field(default_factory=dict)

    def freeze(self) -> None:
        """Stop the observers; make every quantizer use exactly the export's parameters."""
        for fq in self.act_quant.values():
            fq.disable_observer()
            set_range(fq, *self.range_of(fq))

    @staticmethod
    def range_of(fq: FakeQuantize) -> tuple[float, float]:
        obs = fq.activation_post_process
        return float(obs.min_val), float(obs.max_val)

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {t: self.range_of(fq) for t, fq in self.act_quant.items()}
        for t, src in self.shared.items():
            out[t] = out[src]
        return out

    def fp32_model(self) -> nn.Module:
        """The trained weights without fake quantization, in the original module structure.

        (A fresh copy loaded from the state dict: removing the parametrizations from a
        deepcopy would also strip them from `base`, whose parametrized class it shares.)"""
        plain = copy.deepcopy(self.plain_template)
        state = {k.replace(".parametrizations.weight.original", ".weight"): v
                 for k, v in self.base.state_dict().items()}
        plain.load_state_dict(state)
        return plain.eval()


def prepare_qat(model: nn.Module, fp32_onnx: onnx.ModelProto, calib: np.ndarray, *,
                per_channel: bool = True, method: CalibrationMethod = CalibrationMethod.MINMAX,
                percentile: float = 99.99, momentum: float = 0.01) -> QatModel:
    """Fake-quantize a copy of `model` where the static rewrite of `fp32_onnx` (its export)
    quantizes, with activation ranges initialised from `calib`."""
    calib = check_calibration_data(calib, "quantization-aware training")
    base = fold_like_export(model).eval()
    g = Graph(fp32_onnx)
    g.check_supported("quantization-aware training")
    sites = g.weight_sites()
    plan = activation_plan(g, sites, quantize_outputs=True)
    shared = {}
    for t in plan:                         # value-moving op of a quantized tensor: same scale
        p = g.producer.get(t)
        if p is not None and p.op_type in PASSTHROUGH_OPS and p.input[0] in plan:
            shared[t] = p.input[0]
    for t in shared:                       # a chain (MaxPool -> Reshape) leads to its source
        while shared[t] in shared:
            shared[t] = shared[shared[t]]
    sources = [t for t in plan if t not in shared]

    params = dict(base.named_parameters())
    weights = {}
    for s in sites:
        path, _, leaf = s.weight_name.rpartition(".")
        if leaf != "weight" or s.weight_name not in params:
            raise UnsupportedLayerError(
                f"quantization-aware training: the ONNX weight {s.weight_name!r} of "
                f"{s.node.op_type} node {s.node.name!r} is not a parameter of the model")
        weights[s.weight_name] = path

    try:
        gm = torch.fx.symbolic_trace(base)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise UnsupportedLayerError(
            f"quantization-aware training traces the model with torch.fx, which failed for "
            f"{type(model).__name__}: {exc}") from exc
    probe = calib[:PROBE_SAMPLES]
    nodes = _match_nodes(gm, fp32_onnx, g, sources, probe)

    act_quant: dict[str, FakeQuantize] = {}
    by_node: dict[torch.fx.Node, FakeQuantize] = {}
    for k, t in enumerate(sources):
        node = nodes[t]
        if node not in by_node:
            fq = activation_fake_quant(momentum)
            name = f"qat_act_{k}"
            gm.add_submodule(name, fq)
            with gm.graph.inserting_after(node):
                q = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
            by_node[node] = fq
        act_quant[t] = by_node[node]
    gm.graph.lint()
    gm.recompile()

    plain_template = copy.deepcopy(base)
    # the GraphModule holds the same submodule objects as `base`: parametrize once, both see it
    for path in weights.values():
        parametrize.register_parametrization(base.get_submodule(path), "weight",
                                             WeightFakeQuant(per_channel))

    ranges = compute_ranges(fp32_onnx, sources, calib, method, percentile)
    for t in sources:
        set_range(act_quant[t], *ranges[t])
    return QatModel(module=gm.eval(), base=base, act_quant=act_quant, shared=shared,
                    weights=weights, plain_template=plain_template, per_channel=per_channel,
                    details={"activation_fake_quant": len(by_node), "weight_fake_quant": len(weights),
                             "calibration": CalibrationMethod(method).value})


def _match_nodes(gm: torch.fx.GraphModule, fp32_onnx: onnx.ModelProto, g: Graph,
                 tensors: list[str], probe: np.ndarray) -> dict[str, torch.fx.Node]:
    """For each ONNX tensor, the last fx node whose output equals it on `probe`."""
    graph_inputs = [i.name for i in fp32_onnx.graph.input if i.name not in g.inits]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found: dict[str, torch.fx.Node] = {}
    for t in tensors:
        if t in graph_inputs and len(placeholders) == len(graph_inputs):
            found[t] = placeholders[graph_inputs.index(t)]
    wanted = [t for t in tensors if t not in found]
    onnx_vals = {t: np.concatenate(v) for t, v in capture_tensors(fp32_onnx, wanted, probe).items()} \
        if wanted else {}
    torch_vals = _node_outputs(gm, torch.from_numpy(np.array(probe, np.float32)))
    for t in wanted:
        ref_v = onnx_vals[t]
        tol = MATCH_RTOL * max(1.0, float(np.abs(ref_v).max()))
        hits = [n for n, v in torch_vals.items()
                if v.shape == ref_v.shape and float(np.abs(v - ref_v).max()) <= tol]
        if not hits:
            raise UnsupportedLayerError(
                f"quantization-aware training: found no PyTorch operation whose output equals "
                f"the ONNX tensor {t!r} (shape {ref_v.shape}); the static rewrite quantizes it, "
                f"so QAT must too")
        found[t] = hits[-1]
    return found


@torch.no_grad()
def _node_outputs(gm: torch.fx.GraphModule, x: torch.Tensor) -> dict[torch.fx.Node, np.ndarray]:
    """Every node's tensor output for input x, in graph order."""
    out: dict[torch.fx.Node, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n.op != "output" and isinstance(v, torch.Tensor) and v.is_floating_point():
                out[n] = v.detach().numpy().copy()
            return v

    Recorder(gm.eval()).run(x)
    return out


def check_train_data(train_data, what: str) -> tuple[np.ndarray, np.ndarray]:
    if train_data is None:
        raise CompressionError(f"{what} fine-tunes the model and needs train_data=(x, y)")
    x, y = (np.asarray(a) for a in train_data)
    if len(x) == 0 or len(x) != len(y):
        raise CompressionError(f"{what} needs non-empty train_data with as many labels as "
                               f"inputs; got {len(x)} inputs and {len(y)} labels")
    if not np.all(np.isfinite(x.astype(np.float32))):
        raise CompressionError(f"{what}: train_data inputs contain NaN or inf")
    return x.astype(np.float32), y.astype(np.int64)


def train_qat(qm: QatModel, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> QatModel:
    """Fine-tune with fake quantization on, observers following the batches; then freeze."""
    torch.manual_seed(cfg.seed)
    for fq in qm.act_quant.values():
        fq.enable_observer()
        fq.enable_fake_quant()
    train(qm.module, x, y, cfg)
    qm.freeze()
    return qm


def export_qat(qm: QatModel, example_input: np.ndarray, calib: np.ndarray
               ) -> tuple[onnx.ModelProto, dict, onnx.ModelProto]:
    """(int8 QDQ graph, rewrite report, fine-tuned fp32 graph) with the learned ranges."""
    fp32 = export_onnx(qm.fp32_model(), example_input)
    g = Graph(fp32)
    plan = set(activation_plan(g, g.weight_sites(), quantize_outputs=True))
    ranges = qm.ranges()
    lost = sorted(set(ranges) - plan)
    if lost:   # the re-export named its tensors differently: the ranges would not land
        raise CompressionError(f"quantization-aware training: the fine-tuned model's export "
                               f"lacks the tensors {lost[:5]} the fake quantizers stand for")
    opts = QdqOptions(activation_dtype=ACT_DTYPE, weight_bits=WEIGHT_BITS,
                      per_channel=qm.per_channel)
    q, report = quantize_static_qdq(fp32, calib, opts, ranges=ranges)
    return q, report, fp32


def quantization_aware_training(model: nn.Module, fp32_onnx: onnx.ModelProto, calib: np.ndarray,
                                train_data, config: Int8QatConfig,
                                example_input: np.ndarray | None = None
                                ) -> tuple[onnx.ModelProto, dict, QatModel]:
    """The whole QAT path: prepare, fine-tune, export. Returns (int8 QDQ graph, details,
    the trained fake-quant model)."""
    what = f"variant {config.id!r} (QAT)"
    x, y = check_train_data(train_data, what)
    calib = check_calibration_data(calib, what)
    qm = prepare_qat(model, fp32_onnx, calib, per_channel=config.per_channel,
                     method=config.calibration, percentile=config.percentile,
                     momentum=config.observer_momentum)
    tcfg = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                       seed=config.seed)
    train_qat(qm, x, y, tcfg)
    example = calib[:2] if example_input is None else example_input
    q, report, _ = export_qat(qm, example, calib)
    details = {**qm.details, "epochs": config.epochs, "lr": config.lr,
               "batch_size": config.batch_size, "per_channel": config.per_channel,
               "observer_momentum": config.observer_momentum, "train_samples": int(len(y)),
               "calibration_samples": int(len(calib)), "activation_type": ACT_DTYPE,
               "activation_ranges": "learned by the QAT observers",
               "report": report}
    return q, details, qm


@register_variant_handler(Int8QatConfig)
def _int8_qat(config: Int8QatConfig, ctx: CompressContext) -> Artifact:
    if callable(getattr(ctx.model, "export_onnx", None)):
        raise UnsupportedLayerError(
            f"variant {config.id!r}: QAT supports models exported by compressor.export (CNNs, "
            f"MLPs), not {type(ctx.model).__name__} with its own exporter")
    q, details, _ = quantization_aware_training(ctx.model, ctx.fp32_onnx, ctx.calib_data,
                                                ctx.train_data, config, ctx.example_input)
    report = details.pop("report")
    groups = layer_groups_from_report(report["layers"], lambda l: 8)
    return Artifact(onnx=q, method="qat-int8", weight_bits=WEIGHT_BITS, activation_bits=8,
                    parent=ctx.parent_id(), layer_groups=groups, details=details)
