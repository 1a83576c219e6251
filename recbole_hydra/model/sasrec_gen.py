"""SASRecGen: RecBole's SASRec architecture with fused causal attention, trained generatively.

A SASRec-style causal Transformer trained the same generative way as Hydra, to compare the two
sequence layers alone: same item table, same objective (every position predicts its next item,
sampled softmax) and same batches as Hydra and HSTU, so that only the sequence layers differ.
"""

import torch.nn.functional as F
from torch import nn

from recbole_hydra.model.base import GenerativeSequentialRecommender


class CausalSelfAttentionBlock(nn.Module):
    """SASRec's post-norm Transformer layer: ``h = LN(x + Drop(MHA(x)))``, then
    ``LN(h + Drop(W2 act(W1 h)))``; the attention is causal and runs through PyTorch's fused
    ``scaled_dot_product_attention`` (flash attention on CPU and CUDA)."""

    def __init__(
        self,
        hidden_size,
        n_heads,
        inner_size,
        hidden_dropout_prob,
        attn_dropout_prob,
        hidden_act,
        layer_norm_eps,
    ):
        super().__init__()
        self.n_heads, self.attn_dropout_prob = n_heads, attn_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            _ACTIVATIONS[hidden_act](),
            nn.Linear(inner_size, hidden_size),
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout_prob if self.training else 0.0
        )
        h = self.attn_norm(x + self.dropout(self.attn_out(attn.transpose(1, 2).reshape(b, l, d))))
        return self.ffn_norm(h + self.dropout(self.ffn(h)))


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}
HIDDEN_ACTS = tuple(_ACTIVATIONS)  # the values of hidden_act


class SASRecGen(GenerativeSequentialRecommender):
    r"""Item embedding + learned position embedding -> LayerNorm -> Dropout -> ``n_layers`` causal
    Transformer layers (RecBole's SASRec: post-norm, GELU FFN of ``inner_size``) -> the hidden
    state at every position, scored against the item table.

    Differences from RecBole's SASRec, all on purpose: the attention is the fused causal kernel
    (right padding needs no key mask: padding only ever follows the real items), and the
    objective is this package's (``properties/SASRecGen.yaml``: generative InfoNCE by default).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden_size, n_heads = config["hidden_size"], config["n_heads"]  # divisible: config_schema
        hidden_act = config["hidden_act"]
        self.item_embedding = nn.Embedding(self.n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden_size)
        self.emb_norm = nn.LayerNorm(hidden_size, eps=config["layer_norm_eps"])
        self.emb_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.layers = nn.ModuleList(
            CausalSelfAttentionBlock(
                hidden_size,
                n_heads,
                config["inner_size"],
                config["hidden_dropout_prob"],
                config["attn_dropout_prob"],
                hidden_act,
                config["layer_norm_eps"],
            )
            for _ in range(config["n_layers"])
        )
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # RecBole's SASRec: N(0, initializer_range) weights, zero biases, LayerNorm (1, 0)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, item_seq, item_seq_len):
        length = item_seq.size(1)
        if length > self.max_seq_length:
            raise ValueError(
                f"sequence length {length} exceeds MAX_ITEM_LIST_LENGTH {self.max_seq_length}"
            )
        h = self.item_embedding(item_seq) + self.position_embedding.weight[:length]
        h = self.emb_dropout(self.emb_norm(h))
        for layer in self.layers:
            h = layer(h)
        return h
