"""fp32 export: checker passes, dynamic batch, same outputs as PyTorch."""

import numpy as np
import onnx
import torch

from compressor.evaluate import run, session
from compressor.export import export_onnx


def test_export_checks_and_names(digits_fp32_onnx):
    m = digits_fp32_onnx
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")                 # symbolic batch axis
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_export_matches_torch_for_several_batch_sizes(digits, digits_fp32_onnx):
    sess = session(digits_fp32_onnx)
    x = digits.heldout[0]
    for n in (1, 7, len(x)):
        ours = run(sess, x[:n])
        with torch.no_grad():
            theirs = digits.model(torch.from_numpy(np.array(x[:n]))).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_export_of_a_single_sample_still_has_dynamic_batch():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    m = export_onnx(model, np.zeros((1, 1, 8, 8), np.float32))
    out = run(session(m), np.ones((5, 1, 8, 8), np.float32))
    assert out.shape == (5, 3)
