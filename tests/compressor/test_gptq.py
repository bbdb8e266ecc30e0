"""GPTQ: lower layer reconstruction error than round-to-nearest, same file format."""

import numpy as np

from compressor import Fp32Config, Int4WeightOnlyConfig, compress
from compressor.evaluate import LatencyConfig
from compressor.quant import reference as ref
from compressor.quant.graph import Graph
from compressor.quant.gptq import gptq_blockwise, layer_inputs


def test_gptq_beats_rtn_on_layer_reconstruction(digits, digits_fp32_onnx):
    g = Graph(digits_fp32_onnx)
    sites = g.weight_sites()
    xs = layer_inputs(digits_fp32_onnx, sites, digits.calibration[0][:64])
    for s in sites[1:4]:                      # conv2, conv3, fc1
        w = g.array(s.weight_name)
        w2 = w.reshape(w.shape[0], -1)
        x = xs[s.weight_name]
        rtn = ref.dequantize_blockwise_ref(ref.quantize_blockwise_ref(w2, 1, 32))
        gq = ref.dequantize_blockwise_ref(gptq_blockwise(w2, x, 32))
        e_rtn = np.linalg.norm(x @ (w2 - rtn).T)
        e_gptq = np.linalg.norm(x @ (w2 - gq).T)
        assert e_gptq < 0.9 * e_rtn, (s.weight_name, e_gptq, e_rtn)


def test_gptq_variant_holds_accuracy(digits):
    r = compress(digits.model, [Fp32Config(), Int4WeightOnlyConfig(algorithm="gptq")],
                 calib_data=digits.calibration[0], eval_data=digits.heldout,
                 latency=LatencyConfig(warmup=1, repeats=3))
    fp32, gq = r.manifest.variants
    assert gq.id == "int4-gptq" and gq.method == "gptq" and gq.weight_bits == 4
    assert gq.quality >= fp32.quality - 0.01
