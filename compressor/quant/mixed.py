"""Mixed precision per layer, chosen from a measured sensitivity analysis (CNNs, MLPs).

1. Sensitivity: every Conv/Gemm/MatMul is quantized alone (static int8 QDQ of its weight,
   input and output; every other layer fp32) and the variant's quality is measured with the
   same eval_fn compress() records (held-out data). A layer's sensitivity is its quality
   drop; ties (a small model often loses nothing from one layer) are broken by the output
   error on calibration data, ||y_q - y||^2 / ||y||^2 against the fp32 outputs.
2. Selection: from all-int8, the most sensitive layer not yet promoted moves to the next
   candidate precision (int16 QDQ, or fp32 = left out of the rewrite), the model is rebuilt
   and measured, until the drop is within the budget. With ("int8", "int16", "fp32") every
   layer is tried at int16 (most sensitive first) before any goes to fp32. Then each
   promoted layer, least sensitive first, goes back to the lowest precision that keeps the
   budget (undoing promotions that did not help).
3. A budget met only by leaving every layer in fp32 is refused (BudgetError): that would be
   an fp32 copy posing as a quantized variant.

Activation ranges are calibrated once (the full int8 plan covers every single-layer plan)
and reused for every rebuild. Same idea as compressor/transformer's keep_fp32 scan, which
measures the gain of putting one Linear back in fp32 from all-int8; here the scan goes the
other way (one layer quantized from fp32), which isolates each layer's own error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx

from compressor.configs import MixedPrecisionConfig
from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.errors import BudgetError, UnsupportedLayerError
from compressor.evaluate import run, session
from compressor.quant.calibration import (CalibrationMethod, check_calibration_data,
                                          compute_ranges)
from compressor.quant.graph import Graph
from compressor.quant.qdq import QdqOptions, activation_plan, quantize_static_qdq
from compressor.registry import register_variant_handler

ERROR_SAMPLES = 256              # calibration samples for the output-error tie-break
INT16 = (16, "uint16")           # weight bits, activation type of an "int16" layer


@dataclass
class LayerSensitivity:
    weight: str
    node: str
    op: str
    quality: float               # quality with only this layer quantized to int8
    drop: float                  # fp32 quality - quality
    output_error: float          # relative squared output error on calibration data


class MixedBuilder:
    """Builds and measures QDQ variants of one fp32 graph for per-layer precision maps."""

    def __init__(self, fp32: onnx.ModelProto, calib: np.ndarray, eval_fn: Callable,
                 per_channel: bool = True, method: CalibrationMethod = CalibrationMethod.MINMAX,
                 percentile: float = 99.99):
        self.fp32, self.calib, self.eval_fn = fp32, calib, eval_fn
        g = Graph(fp32)
        g.check_supported("mixed precision")
        self.sites = g.weight_sites()
        if not self.sites:
            raise UnsupportedLayerError("mixed precision: the model has no Conv/Gemm/MatMul "
                                        "with a constant weight to quantize")
        self.weights = [s.weight_name for s in self.sites]
        self.opts = dict(per_channel=per_channel, method=CalibrationMethod(method),
                         percentile=percentile)
        self.ranges = compute_ranges(fp32, activation_plan(g, self.sites, True), calib,
                                     self.opts["method"], percentile)
        probe = calib[:ERROR_SAMPLES]
        self._probe = probe
        self._ref_out = run(session(fp32), probe)
        self.fp32_quality = float(eval_fn(session(fp32)))

    def build(self, precision: dict[str, str]) -> tuple[onnx.ModelProto, dict]:
        """precision: weight name -> "int8" | "int16" | "fp32" (missing: int8)."""
        exclude = tuple(w for w in self.weights if precision.get(w, "int8") == "fp32")
        overrides = {w: INT16 for w in self.weights if precision.get(w) == "int16"}
        opts = QdqOptions(exclude=exclude, overrides=overrides, **self.opts)
        return quantize_static_qdq(self.fp32, self.calib, opts, ranges=self.ranges)

    def quality(self, model: onnx.ModelProto) -> float:
        return float(self.eval_fn(session(model)))

    def output_error(self, model: onnx.ModelProto) -> float:
        y = run(session(model), self._probe)
        return float(np.sum((y - self._ref_out) ** 2) / max(np.sum(self._ref_out ** 2), 1e-30))


def layer_sensitivity(b: MixedBuilder, say: Callable[[str], None] = lambda _m: None
                      ) -> list[LayerSensitivity]:
    """Quantize each layer alone; most sensitive first."""
    out = []
    for k, s in enumerate(b.sites):
        alone = {w: ("int8" if w == s.weight_name else "fp32") for w in b.weights}
        model, _ = b.build(alone)
        q = b.quality(model)
        out.append(LayerSensitivity(weight=s.weight_name, node=s.node.name, op=s.node.op_type,
                                    quality=q, drop=b.fp32_quality - q,
                                    output_error=b.output_error(model)))
        say(f"sensitivity {k + 1}/{len(b.sites)} {s.weight_name}: drop {out[-1].drop:+.4f}")
    return sorted(out, key=lambda r: (-round(r.drop, 9), -r.output_error))


def choose_precision(b: MixedBuilder, max_drop: float, candidates: tuple[str, ...],
                     say: Callable[[str], None] = lambda _m: None):
    """Greedy promotion in sensitivity order until the drop is <= max_drop.

    Returns (model, report, precision map, sensitivities, steps)."""
    ranked = layer_sensitivity(b, say)
    precision = {w: "int8" for w in b.weights}
    model, report = b.build(precision)
    q = b.quality(model)
    steps = [{"promoted": None, "to": "int8", "quality": q}]
    for level in candidates[1:]:
        for r in ranked:
            if b.fp32_quality - q <= max_drop:
                break
            precision[r.weight] = level
            if all(p == "fp32" for p in precision.values()):
                break
            model, report = b.build(precision)
            q = b.quality(model)
            steps.append({"promoted": r.weight, "to": level, "quality": q})
            say(f"{r.weight} -> {level}: quality {q:.4f} (drop {b.fp32_quality - q:+.4f})")
    drop = b.fp32_quality - q
    if drop <= max_drop and not all(p == "fp32" for p in precision.values()):
        model, report, q = _give_back(b, max_drop, candidates, ranked, precision, model, report,
                                      q, steps, say)
        drop = b.fp32_quality - q
    if drop > max_drop or all(p == "fp32" for p in precision.values()):
        best = max(steps, key=lambda s: s["quality"])
        raise BudgetError(
            f"mixed precision: no choice among {candidates} keeps the quality drop within "
            f"{max_drop:g} while quantizing any layer (fp32 quality {b.fp32_quality:.4f}; "
            f"best quantized {best['quality']:.4f}, drop {b.fp32_quality - best['quality']:.4f}; "
            f"most sensitive layer {ranked[0].weight} alone drops {ranked[0].drop:.4f})")
    return model, report, precision, ranked, steps


def _give_back(b: MixedBuilder, max_drop: float, candidates: tuple[str, ...],
               ranked: list[LayerSensitivity], precision: dict[str, str], model, report,
               q: float, steps: list, say):
    """Greedy promotion can overshoot: a promotion that did not help (an int16 layer whose
    8-bit output still loses, say) stays. Walk the promoted layers, least sensitive first,
    and move each to the lowest candidate that keeps the drop within budget."""
    for r in reversed(ranked):
        level = candidates.index(precision[r.weight])
        for lower in candidates[:level]:
            trial = {**precision, r.weight: lower}
            m, rep = b.build(trial)
            tq = b.quality(m)
            if b.fp32_quality - tq <= max_drop:
                precision[r.weight] = lower
                model, report, q = m, rep, tq
                steps.append({"demoted": r.weight, "to": lower, "quality": tq})
                say(f"{r.weight} back to {lower}: quality {tq:.4f}")
                break
    return model, report, q


@register_variant_handler(MixedPrecisionConfig)
def _mixed(config: MixedPrecisionConfig, ctx: CompressContext) -> Artifact:
    calib = check_calibration_data(ctx.calib_data, f"variant {config.id!r} (mixed precision)")
    b = MixedBuilder(ctx.fp32_onnx, calib, ctx.eval_fn, per_channel=config.per_channel,
                     method=config.calibration, percentile=config.percentile)
    model, report, precision, ranked, steps = choose_precision(b, config.max_drop,
                                                               config.candidates)
    layers = list(report["layers"])
    sites = {s.weight_name: s for s in b.sites}
    for w, p in precision.items():
        if p == "fp32":
            layers.append({"node": sites[w].node.name, "weight": w, "op": sites[w].node.op_type,
                           "weight_bits": 32, "activation_dtype": "float32"})
    groups = layer_groups_from_report(
        layers, lambda l: 32 if l["activation_dtype"] == "float32" else int(l["activation_dtype"].lstrip("uint")))
    sens = {r.weight: r for r in ranked}
    details = {
        "max_drop": config.max_drop, "candidates": list(config.candidates),
        "calibration": config.calibration.value, "per_channel": config.per_channel,
        "calibration_samples": int(len(calib)), "fp32_quality": b.fp32_quality,
        "all_int8_quality": steps[0]["quality"], "selected_quality": steps[-1]["quality"],
        "layers": [{**asdict(sens[w]), "precision": precision[w],
                    "rank": ranked.index(sens[w])} for w in b.weights],
        "steps": steps,
    }
    return Artifact(onnx=model, method="mixed-precision",
                    weight_bits=max(g.weight_bits for g in groups),
                    activation_bits=max(g.activation_bits for g in groups),
                    parent=ctx.parent_id(), layer_groups=groups, details=details)
