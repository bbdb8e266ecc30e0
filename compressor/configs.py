"""User-facing configs: one dataclass per kind of variant (torchao's habit).

Every field has a default, `__post_init__` rejects nonsense early, and `version` is bumped
when a field's meaning changes. `config_to_dict`/`config_from_dict` serialise a config as
{"_type", "_version", "_data"} against an allow-list of the classes defined here, so a
config read from JSON can never name an arbitrary class.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from compressor.quant.calibration import CalibrationMethod

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")


class ActivationType(str, enum.Enum):
    UINT8 = "uint8"
    """Asymmetric uint8: the fast u8s8 path of onnxruntime's x86 kernels; ReLU ranges
    [0, max] use every code."""
    INT8 = "int8"
    """int8 (symmetric or asymmetric): what ARM kernels and some NPUs prefer."""
    UINT16 = "uint16"
    """16-bit activations for layers whose 8-bit error is too large (runs unfused)."""
    INT16 = "int16"
    """Signed 16-bit activations."""


@dataclass
class VariantConfig:
    """Base of all variant configs. `id` names the variant in the bundle (and its file)."""

    version: ClassVar[int] = 1
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.default_id()
        if not (self.id[0].isalnum() and set(self.id) <= _ID_CHARS and len(self.id) <= 64):
            raise ValueError(f"variant id {self.id!r}: use lower-case letters, digits, '.', '_', '-'")

    def default_id(self) -> str:
        raise NotImplementedError


@dataclass
class Fp32Config(VariantConfig):
    """The exported model as is: the quality reference and every other variant's parent."""

    def default_id(self) -> str:
        return "fp32"


@dataclass
class Int8StaticConfig(VariantConfig):
    """Static post-training quantization to int8 in QDQ form.

    Args:
        calibration: how activation ranges are chosen from the calibration data.
        percentile: for `calibration="percentile"`, the percentile kept (e.g. 99.99).
        activation_type: integer type of activations.
        symmetric_activations: zero point 0 (signed types only); default asymmetric.
        per_channel: one weight scale per output channel (else one per tensor).
        weight_bits: 8, or 16 for a 16-bit-weight variant.
        exclude: node or weight names kept in fp32.
    """

    calibration: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    activation_type: ActivationType = ActivationType.UINT8
    symmetric_activations: bool = False
    per_channel: bool = True
    weight_bits: int = 8
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.calibration = CalibrationMethod(self.calibration)
        self.activation_type = ActivationType(self.activation_type)
        self.exclude = tuple(self.exclude)
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.weight_bits not in (8, 16):
            raise ValueError(f"Int8StaticConfig.weight_bits must be 8 or 16, got {self.weight_bits}")
        if self.symmetric_activations and self.activation_type.value.startswith("u"):
            raise ValueError("symmetric activations need a signed activation_type (int8/int16)")
        super().__post_init__()

    def default_id(self) -> str:
        return "int8" if self.weight_bits == 8 and self.activation_type.value.endswith("8") else \
            f"w{self.weight_bits}a{self.activation_type.value[-2:].strip('t')}"


@dataclass
class Int4WeightOnlyConfig(VariantConfig):
    """Weight-only block quantization (activations stay fp32).

    Args:
        group_size: consecutive weights sharing one scale, along the reduction axis
            (a power of two >= 8; a layer narrower than one group gets a single group).
        bits: 4, or 2. int2 is not ONNX INT2 (onnxruntime 1.32 has no DequantizeLinear
            kernel for it): codes are packed four per uint8 and unpacked by ordinary ops that
            onnxruntime folds at load (compressor/quant/int2.py); group_size 32, 64 or 128,
            float16 scales, codes chosen by a per-group MSE search.
        symmetric: signed codes with zero point 0 (int2: levels +-0.5, +-1.5 x scale); False
            adds a per-group zero point (int2: a float16 one).
        algorithm: "rtn" (round to nearest; int2: MSE-searched scales) or "gptq"
            (error-correcting, needs calibration data; symmetric only at 4 bits).
        edge_bits: bits of the first and last weight layers (2, 4 or 8); None keeps them at
            `bits` for int4 and at 8 for int2, where they cost the most accuracy for the
            fewest bytes.
    """

    group_size: int = 32
    bits: int = 4
    symmetric: bool = True
    exclude: tuple[str, ...] = ()
    algorithm: str = "rtn"
    edge_bits: int | None = None

    def __post_init__(self) -> None:
        from compressor.quant.weight_only import check_weight_only_args
        if self.algorithm not in ("rtn", "gptq"):
            raise ValueError(f"algorithm must be 'rtn' or 'gptq', got {self.algorithm!r}")
        if self.algorithm == "gptq" and not self.symmetric and self.bits != 2:
            raise ValueError("gptq at 4 bits here is symmetric only")
        check_weight_only_args(self.bits, self.group_size, self.edge_bits)
        if self.edge_bits is None:
            self.edge_bits = 8 if self.bits == 2 else self.bits
        self.exclude = tuple(self.exclude)
        super().__post_init__()

    def default_id(self) -> str:
        base = f"int{self.bits}" if self.group_size == 32 else f"int{self.bits}-g{self.group_size}"
        default_edges = 8 if self.bits == 2 else self.bits
        edges = "" if self.edge_bits in (None, default_edges) else f"-e{self.edge_bits}"
        return base + edges + ("-gptq" if self.algorithm == "gptq" else "")


@dataclass
class Int8DynamicConfig(VariantConfig):
    """Dynamic quantization: int8 per-channel weights, activations quantized per call
    (no calibration data needed).

    Args:
        include_conv: also quantize Conv layers (ConvInteger; usually slower than fp32 on
            onnxruntime's CPU kernels, so off by default, like torch.ao's dynamic mode).
        exclude: node or weight names kept in fp32.
    """

    include_conv: bool = False
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.exclude = tuple(self.exclude)
        super().__post_init__()

    def default_id(self) -> str:
        return "int8-dynamic"


class SparsityPattern(str, enum.Enum):
    UNSTRUCTURED = "unstructured"
    """Any weight may be zeroed (needs a sparse kernel to run faster)."""
    TWO_FOUR = "2:4"
    """2 of every 4 consecutive weights zeroed (hardware-friendly N:M)."""
    CHANNEL = "channel"
    """Whole filters removed: a smaller dense model with fewer MACs."""


@dataclass
class PruneConfig(VariantConfig):
    """Pruning, fine-tuning, and optionally static int8 on top.

    Args:
        sparsity: fraction of weights (unstructured), or of channels per group (channel),
            to remove; 2:4 is always 0.5 of the eligible weights.
        pattern: unstructured | 2:4 | channel.
        importance: magnitude (data-free) or activation (data-aware, calibration data).
        scope: for unstructured, per layer or one global threshold.
        finetune_epochs: training epochs after pruning (pruned weights held at zero);
            0 skips fine-tuning. Needs train_data.
        finetune_lr: learning rate for fine-tuning.
        int8: quantize the pruned model with static int8 (min-max, per-channel).
        seed: seeds fine-tuning.
        block: for unstructured, remove whole (rows, cols) blocks of weights (output channels x
            consecutive inputs) instead of single weights, e.g. (16, 4) for the native engine's
            block-sparse int8 kernel; grouped (depthwise) convolutions and layers with fewer
            than 4 blocks along their input are left dense. None: single weights.
    """

    sparsity: float = 0.5
    pattern: SparsityPattern = SparsityPattern.UNSTRUCTURED
    importance: str = "magnitude"
    scope: str = "layer"
    finetune_epochs: int = 5
    finetune_lr: float = 1e-3
    int8: bool = False
    seed: int = 0
    block: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        from compressor.prune.importance import Importance
        from compressor.prune.masks import Scope
        self.pattern = SparsityPattern(self.pattern)
        self.importance = Importance(self.importance).value
        self.scope = Scope(self.scope).value
        if self.pattern is SparsityPattern.TWO_FOUR:
            self.sparsity = 0.5
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.finetune_epochs < 0:
            raise ValueError("finetune_epochs must be >= 0")
        if self.block is not None:
            self.block = tuple(int(b) for b in self.block)
            if len(self.block) != 2 or min(self.block) < 1:
                raise ValueError(f"block must be (rows, cols) >= 1, got {self.block}")
            if self.pattern is not SparsityPattern.UNSTRUCTURED:
                raise ValueError("block applies to the unstructured pattern only")
        super().__post_init__()

    def default_id(self) -> str:
        if self.block is not None:
            return f"sparse{round(self.sparsity * 100)}-b{self.block[0]}x{self.block[1]}" + ("-int8" if self.int8 else "")
        pat = {"unstructured": "sparse", "2:4": "sparse24", "channel": "pruned"}[self.pattern.value]
        base = pat if self.pattern is SparsityPattern.TWO_FOUR else f"{pat}{round(self.sparsity * 100)}"
        return base + ("-int8" if self.int8 else "")


@dataclass
class DistillConfig(VariantConfig):
    """A narrower student trained from the teacher (the model given to compress()).

    Args:
        width: student channel multiplier (the model must offer make_student(width)).
        temperature: softmax temperature of the Hinton KD term.
        alpha: weight of the KD term; 1 - alpha weighs cross-entropy on the labels.
        feature_weight: weight of intermediate-feature distillation (0 turns it off).
        epochs, lr, seed: student training.
        int8: also quantize the student with static int8.
    """

    width: float = 0.5
    temperature: float = 4.0
    alpha: float = 0.5
    feature_weight: float = 0.0
    epochs: int = 20
    lr: float = 1e-2
    int8: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.width < 1.0:
            raise ValueError(f"student width must be in (0, 1), got {self.width}")
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0 or self.feature_weight < 0:
            raise ValueError("temperature must be > 0, alpha in [0, 1], feature_weight >= 0")
        if self.epochs < 1:
            raise ValueError("a student needs epochs >= 1")
        super().__post_init__()

    def default_id(self) -> str:
        return f"student{round(self.width * 100)}" + ("-int8" if self.int8 else "")


# -- quantization-aware training and mixed precision (compressor/quant/qat.py, mixed.py) --

@dataclass
class Int8QatConfig(VariantConfig):
    """Quantization-aware training to the static int8 QDQ format.

    Fake quantization is put into a copy of the model exactly where the static rewrite puts
    QuantizeLinear/DequantizeLinear (weights symmetric int8 per channel or per tensor,
    activations uint8 per tensor with a straight-through estimator); activation observers
    start from the calibration ranges and follow the training batches (moving average);
    the model is fine-tuned on train_data and exported with the learned ranges.

    Args:
        epochs: fine-tuning passes over train_data (>= 1).
        lr: AdamW learning rate (cosine-decayed), small: the model is already trained.
        batch_size: mini-batch size.
        calibration: how the starting activation ranges are chosen (as Int8StaticConfig).
        percentile: for calibration="percentile".
        per_channel: one weight scale per output channel (else one per tensor).
        observer_momentum: moving-average weight of each training batch's min/max
            (torch's MovingAverageMinMaxObserver averaging_constant); 0 freezes the
            calibrated ranges.
        seed: seeds the fine-tuning.
    """

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    calibration: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    per_channel: bool = True
    observer_momentum: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.calibration = CalibrationMethod(self.calibration)
        if self.epochs < 1:
            raise ValueError(f"QAT needs epochs >= 1, got {self.epochs} (use Int8StaticConfig "
                             "for no training)")
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"QAT needs lr > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")
        if not 0.0 <= self.observer_momentum <= 1.0:
            raise ValueError(f"observer_momentum must be in [0, 1], got {self.observer_momentum}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        super().__post_init__()

    def default_id(self) -> str:
        return "int8-qat" if self.per_channel else "int8-qat-pt"


MIXED_PRECISIONS = ("int8", "int16", "fp32")


@dataclass
class MixedPrecisionConfig(VariantConfig):
    """Static int8 with the most sensitive layers kept at higher precision.

    Each Conv/Gemm/MatMul is quantized alone (all others fp32) and the quality drop on the
    held-out data is measured (ties broken by the output error on calibration data). Then,
    from all-int8, the most sensitive layers are promoted one at a time to the next
    candidate precision until the drop is within `max_drop`.

    Args:
        max_drop: largest accepted quality drop vs fp32, in the metric's units
            (accuracy 0.005 = half a point).
        candidates: precisions in increasing order, starting with "int8"; from
            "int16" (int16 weights, uint16 inputs: QDQ that onnxruntime runs unfused)
            and "fp32" (the layer is left out of quantization).
        calibration, percentile, per_channel: as Int8StaticConfig.
    """

    max_drop: float = 0.005
    candidates: tuple[str, ...] = ("int8", "fp32")
    calibration: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    per_channel: bool = True

    def __post_init__(self) -> None:
        self.calibration = CalibrationMethod(self.calibration)
        self.candidates = tuple(self.candidates)
        if not self.max_drop >= 0.0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")
        order = [MIXED_PRECISIONS.index(c) if c in MIXED_PRECISIONS else -1 for c in self.candidates]
        if len(order) < 2 or self.candidates[0] != "int8" or -1 in order or order != sorted(set(order)):
            raise ValueError(f"candidates must start with 'int8' and add higher precisions in "
                             f"order from {MIXED_PRECISIONS[1:]}, got {self.candidates}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        super().__post_init__()

    def default_id(self) -> str:
        return f"mixed-{round(self.max_drop * 1000)}"


# -- serialisation ---------------------------------------------------------------------

def _allowed() -> dict[str, type]:
    out = {}
    stack = [VariantConfig]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("compressor."):
                out[sub.__name__] = sub
            stack.append(sub)
    return out


def config_to_dict(config: VariantConfig) -> dict[str, Any]:
    data = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        data[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
    return {"_type": type(config).__name__, "_version": type(config).version, "_data": data}


def config_from_dict(d: dict[str, Any]) -> VariantConfig:
    allowed = _allowed()
    cls = allowed.get(d.get("_type", ""))
    if cls is None:
        raise ValueError(f"unknown config type {d.get('_type')!r}; allowed: {sorted(allowed)}")
    if d.get("_version") != cls.version:
        warnings.warn(f"{cls.__name__} version {d.get('_version')} != {cls.version}", stacklevel=2)
    return cls(**d.get("_data", {}))
