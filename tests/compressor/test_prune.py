"""Pruning: masks and scores by hand, structured removal equals zeroed channels, variants."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compressor import CompressionError, Fp32Config, PruneConfig, UnsupportedLayerError, compress
from compressor.evaluate import LatencyConfig
from compressor.models.digits_cnn import DigitsCNN
from compressor.prune.importance import Importance, channel_contribution, weight_scores
from compressor.prune.masks import n_m_masks, unstructured_masks
from compressor.prune.structured import ChannelGroup, prune_channels

FAST = LatencyConfig(warmup=1, repeats=3)


def test_unstructured_masks_layer_and_global():
    scores = {"a": torch.tensor([[1.0, 5.0], [3.0, 2.0]]), "b": torch.tensor([[10.0, 20.0]])}
    m = unstructured_masks(scores, 0.5, "layer")
    assert m["a"].tolist() == [[0, 1], [1, 0]] and m["b"].tolist() == [[0, 1]]
    g = unstructured_masks(scores, 0.5, "global")     # drops the 3 smallest of 6: 1, 2, 3
    assert g["a"].tolist() == [[0, 1], [0, 0]] and g["b"].tolist() == [[1, 1]]


def test_two_four_mask_hand_values():
    s = {"w": torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 0.0, 1.0, 7.0]])}
    m = n_m_masks(s)["w"]
    assert m.tolist() == [[1, 0, 1, 0, 1, 1, 0, 0, 1]]   # tail of 1 (9 % 4) stays dense


def test_wanda_scores_hand_values():
    lin = torch.nn.Linear(2, 2, bias=False)
    lin.weight.data = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    model = torch.nn.Sequential(lin)
    x = np.array([[2.0, 0.0], [0.0, 0.5]], np.float32)      # ||x_0|| = 2, ||x_1|| = 0.5
    s = weight_scores(model, Importance.ACTIVATION, x)["0"]
    assert s.tolist() == [[2.0, 1.0], [6.0, 2.0]]
    assert weight_scores(model, "magnitude", None)["0"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_channel_contribution_hand_values():
    # channel c's score = mean ReLU(activation_c) * ||reader weights on c||
    conv = torch.nn.Conv2d(1, 2, 1, bias=False)
    conv.weight.data = torch.tensor([[[[1.0]]], [[[-1.0]]]])     # ch0 = x, ch1 = -x
    lin = torch.nn.Linear(4, 1, bias=False)                      # 2 features per channel
    lin.weight.data = torch.tensor([[3.0, 4.0, 0.0, 0.5]])      # ||ch0|| = 5, ||ch1|| = 0.5
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), lin)
    x = np.array([[[[2.0, 0.0]]], [[[0.0, -4.0]]]], np.float32)  # (N=2, C=1, 1, 2)
    s = channel_contribution(model, ChannelGroup("c", ("0",), ("2",), inp_repeat=2), x)
    # ch0 = [2, 0 | 0, -4] -> relu mean 0.5; ch1 = [-2, 0 | 0, 4] -> relu mean 1.0
    np.testing.assert_allclose(s.numpy(), [0.5 * 5.0, 1.0 * 0.5], rtol=1e-6)


def test_removing_channels_equals_zeroing_them():
    torch.manual_seed(0)
    model = DigitsCNN(width=0.25).eval()
    groups = model.channel_groups()
    scores = {g.name: torch.rand(model.get_submodule(g.out[0]).weight.shape[0]) for g in groups}
    small, report = prune_channels(model, groups, 0.5, scores)
    assert small.conv1.out_channels == report["conv1"]["kept"] == 4
    assert small.fc1.in_features == small.conv3.out_channels * 4
    # the same network with the removed channels zeroed gives the same outputs
    zeroed = DigitsCNN(width=0.25).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for g in groups:
            keep = set(torch.argsort(scores[g.name], descending=True)[:report[g.name]["kept"]].tolist())
            drop = [c for c in range(len(scores[g.name])) if c not in keep]
            mod = zeroed.get_submodule(g.out[0])
            mod.weight[drop] = 0
            mod.bias[drop] = 0
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), zeroed(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def pruned_bundle(digits):
    configs = [Fp32Config(), PruneConfig(sparsity=0.5, finetune_epochs=2),
               PruneConfig(pattern="2:4", importance="activation", finetune_epochs=2),
               PruneConfig(pattern="channel", sparsity=0.5, int8=True, finetune_epochs=4)]
    return compress(digits.model, configs, calib_data=digits.calibration[0],
                    eval_data=digits.heldout, train_data=digits.train, latency=FAST)


def test_unstructured_and_24_variants(pruned_bundle):
    v = {x.id: x for x in pruned_bundle.manifest.variants}
    fp32 = v["fp32"].quality
    assert v["sparse50"].sparsity >= 0.5 and v["sparse50"].sparsity_pattern == "unstructured"
    assert v["sparse24"].sparsity_pattern == "2:4" and v["sparse24"].method == "activation-2:4"
    for k in ("sparse50", "sparse24"):
        assert v[k].quality >= fp32 - 0.015
    # the exported 2:4 weights really hold 2 zeros in each group of 4
    m = onnx.load_from_string(pruned_bundle.files["sparse24.onnx"])
    w = numpy_helper.to_array([t for t in m.graph.initializer if t.name == "conv2.weight"][0])
    groups = w.reshape(w.shape[0], -1)[:, :(w[0].size // 4) * 4].reshape(-1, 4)
    assert ((groups == 0).sum(1) >= 2).all()


def test_channel_pruned_int8_is_smaller_with_fewer_macs(pruned_bundle):
    v = {x.id: x for x in pruned_bundle.manifest.variants}
    p = v["pruned50-int8"]
    assert p.sparsity_pattern == "channel" and p.weight_bits == 8
    assert p.details["macs"] < 0.4 * p.details["macs_fp32"]
    assert p.size_bytes < v["fp32"].size_bytes / 8
    assert p.quality >= v["fp32"].quality - 0.015
    assert p.details["channels"]["conv2"] == {"channels": 64, "kept": 32}


def test_pruning_bad_input(digits):
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(UnsupportedLayerError, match="channel_groups"):
        compress(plain, [PruneConfig(pattern="channel", finetune_epochs=0)],
                 eval_data=digits.heldout, latency=FAST)
    with pytest.raises(CompressionError, match="train_data"):
        compress(plain, [PruneConfig()], eval_data=digits.heldout, latency=FAST)
    with pytest.raises(ValueError, match="sparsity"):
        PruneConfig(sparsity=1.0)


def test_block_masks_hand_values():
    from compressor.prune.masks import block_masks
    # 2 x 2 blocks of a [3, 5] layer (edge blocks partial); block sums: [[10, 1, 9], [0.5, 8, 0]]
    s = torch.tensor([[4.0, 3.0, 0.5, 0.5, 5.0],
                      [2.0, 1.0, 0.0, 0.0, 4.0],
                      [0.5, 0.0, 4.0, 4.0, 0.0]])
    m = block_masks({"w": s}, 0.5, (2, 2))["w"]         # drops the 3 lowest of 6 blocks: 0, 0.5, 1
    assert m.tolist() == [[1, 1, 0, 0, 1], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]]
    conv = block_masks({"c": torch.rand(32, 8, 1, 1)}, 0.75, (16, 4))["c"]
    assert conv.shape == (32, 8, 1, 1) and int(conv.sum()) == 16 * 4      # 1 of 4 blocks kept
    with pytest.raises(ValueError, match="block"):
        block_masks({"w": s}, 0.5, (0, 4))


def test_block_pruning_zeroes_whole_blocks_and_leaves_depthwise_dense():
    from compressor.models.mobilenet_v2 import MobileNetV2
    from compressor.prune.handlers import prune_model
    torch.manual_seed(0)
    model = MobileNetV2(width=0.5).eval()
    pruned, details = prune_model(model, PruneConfig(sparsity=0.75, block=(16, 4), finetune_epochs=0), None, None)
    assert details["block"] == [16, 4]
    for name, mod in pruned.named_modules():
        if not isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        if getattr(mod, "groups", 1) > 1 or w.shape[1] < 16:
            assert (w != 0).all(), name                   # depthwise and the 1-channel stem untouched
            continue
        n, k = w.shape
        pad = torch.zeros(-(-n // 16) * 16, -(-k // 4) * 4)
        pad[:n, :k] = w
        nonzero = (pad.reshape(pad.shape[0] // 16, 16, -1, 4) != 0).any(dim=3).any(dim=1)
        blocks = nonzero.numel()
        assert int(nonzero.sum()) == blocks - int(0.75 * blocks), name     # whole blocks removed
        # a kept block keeps all its weights (random init has no exact zeros)
        kept = nonzero.repeat_interleave(16, 0).repeat_interleave(4, 1)[:n, :k]
        assert (w[kept] != 0).all() and (w[~kept] == 0).all(), name
    with pytest.raises(ValueError, match="block"):
        PruneConfig(block=(16, 0))
    with pytest.raises(ValueError, match="unstructured"):
        PruneConfig(pattern="2:4", block=(16, 4))
    assert PruneConfig(sparsity=0.75, block=(16, 4), int8=True).default_id() == "sparse75-b16x4-int8"


def test_block_pruned_int8_variant_keeps_quality(digits):
    bundle = compress(digits.model, [Fp32Config(), PruneConfig(sparsity=0.5, block=(16, 4), int8=True,
                                                               finetune_epochs=2)],
                      calib_data=digits.calibration[0], eval_data=digits.heldout, train_data=digits.train,
                      latency=FAST)
    v = {x.id: x for x in bundle.manifest.variants}
    b = v["sparse50-b16x4-int8"]
    assert b.method == "magnitude-block16x4+ptq-static" and b.weight_bits == 8
    assert b.quality >= v["fp32"].quality - 0.03
    # the int8 weights of conv2 hold whole zero 16 x 4 blocks
    m = onnx.load_from_string(bundle.files["sparse50-b16x4-int8.onnx"])
    q = [numpy_helper.to_array(t) for t in m.graph.initializer if t.name.startswith("conv2.weight")
         and numpy_helper.to_array(t).dtype == np.int8]
    assert q, [t.name for t in m.graph.initializer]
    w = q[0].reshape(q[0].shape[0], -1)
    from kernels.engine.irops import bsr_block_fraction
    assert bsr_block_fraction(w) <= 0.5 + 1e-9
