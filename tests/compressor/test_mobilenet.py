"""MobileNetV2-style net: BN folded at export (same outputs), every conv runs as QLinearConv."""

import numpy as np
import onnx
import torch

from compressor.evaluate import run, session
from compressor.export import export_onnx
from compressor.models.mobilenet_v2 import MobileNetV2
from compressor.prune.structured import prune_channels
from compressor.quant.qdq import QdqOptions, quantize_static_qdq


def _model():
    torch.manual_seed(0)
    m = MobileNetV2(width=0.25)
    m.train()
    with torch.no_grad():                       # give BatchNorm non-trivial running stats
        for _ in range(3):
            m(torch.rand(16, 1, 16, 16))
    return m.eval()


def test_export_folds_batchnorm_and_matches_torch():
    m = _model()
    proto = export_onnx(m, np.zeros((2, 1, 16, 16), np.float32))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Clip" in ops
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(run(session(proto), x), m(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_int8_depthwise_and_relu6_convs_all_fuse(tmp_path):
    import onnxruntime as ort
    m = _model()
    proto = export_onnx(m, np.zeros((2, 1, 16, 16), np.float32))
    calib = np.random.default_rng(1).random((32, 1, 16, 16), dtype=np.float32)
    q, report = quantize_static_qdq(proto, calib, QdqOptions())
    n_conv = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert report["clips_removed"] == sum(n.op_type == "Clip" for n in proto.graph.node)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == n_conv, ops
    # residual Adds run on int8 too (scalar Q/DQ params; shape-[1] ones blocked the fusion)
    n_add = sum(n.op_type == "Add" for n in proto.graph.node)
    assert n_add > 0 and ops.count("QLinearAdd") == n_add and "Add" not in ops, ops
    # removing the Clip is exact: the output Q saturates inside [0, 6]
    ref_out = run(session(proto), calib)
    assert np.abs(run(session(q), calib) - ref_out).max() < 0.1 * np.abs(ref_out).max()


def test_channel_groups_prune_hidden_channels():
    m = _model()
    groups = m.channel_groups()
    scores = {g.name: torch.rand(m.get_submodule(g.out[0]).weight.shape[0]) for g in groups}
    small, rep = prune_channels(m, groups, 0.5, scores)
    b = small.blocks[1]
    assert b.dw.conv.groups == b.dw.conv.out_channels == b.expand.conv.out_channels
    assert b.project.conv.in_channels == b.dw.conv.out_channels == rep["blocks.1"]["kept"]
    out = small(torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 10)


def test_fold_batchnorm_turns_a_constant_channel_into_its_beta():
    """A channel with running variance below eps (constant in training: dead ReLU or pruned
    inputs) folds to weight 0 and bias beta, not to weights scaled by 1/sqrt(eps); the other
    channels fold exactly."""
    from compressor.models.mobilenet_v2 import ConvBNAct, fold_batchnorm

    torch.manual_seed(0)
    block = torch.nn.Sequential(ConvBNAct(3, 4, 3, act=False)).eval()
    bn = block[0].bn
    bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.0, 1.5]))       # channel 2 was constant
    bn.weight.data.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0]))
    bn.bias.data.copy_(torch.tensor([0.0, 0.1, 0.7, -0.3]))
    folded = fold_batchnorm(block)
    conv = folded[0].conv
    assert torch.all(conv.weight[2] == 0) and conv.bias[2].item() == np.float32(0.7)
    assert conv.weight.abs().max() < 10                              # no 1/sqrt(eps) blow-up
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want, got = block(x), folded(x)
    keep = [0, 1, 3]
    np.testing.assert_allclose(got[:, keep].numpy(), want[:, keep].numpy(), rtol=1e-5, atol=1e-5)
