"""Mamba4Rec: selective state spaces for sequential recommendation (Liu et al. 2024,
arXiv 2403.03900).

Follows the authors' code (github.com/chengkai-liu/Mamba4Rec, ``mamba4rec.py``) on top of this
package's base model, so it trains either RecBole's way (``train_mode: prefix``, the paper's) or
generatively (loss at every position).
"""

from recbole.model.layers import FeedForward
from torch import nn

from recbole_hydra.layers.mamba1 import Mamba1
from recbole_hydra.layers.selective_scan import DEFAULT_CHUNK_SIZE
from recbole_hydra.model.base import GenerativeSequentialRecommender

LAYER_NORM_EPS = 1e-12  # the reference's, everywhere


class ReferenceFeedForward(FeedForward):
    """RecBole's position-wise FFN ``LayerNorm(x + Dropout(W_2 act(W_1 x)))`` with the reference's
    extra dropout after the activation (the reference FFN is RecBole's plus that one)."""

    def forward(self, input_tensor):
        hidden = self.dropout(self.intermediate_act_fn(self.dense_1(input_tensor)))
        hidden = self.dropout(self.dense_2(hidden))
        return self.LayerNorm(hidden + input_tensor)


class Mamba4RecLayer(nn.Module):
    """Mamba-1 block -> Dropout -> LayerNorm (with the input added back when ``residual``) -> FFN.

    The reference drops the residual around the Mamba block when the model has a single layer.
    """

    def __init__(
        self,
        hidden_size,
        d_state,
        d_conv,
        expand,
        dropout_prob,
        inner_size,
        residual,
        chunk_size=DEFAULT_CHUNK_SIZE,
    ):
        super().__init__()
        self.residual = residual
        self.mamba = Mamba1(
            hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size
        )
        self.dropout = nn.Dropout(dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.ffn = ReferenceFeedForward(
            hidden_size, inner_size, dropout_prob, "gelu", LAYER_NORM_EPS
        )

    def forward(self, h):
        out = self.dropout(self.mamba(h))
        if self.residual:
            out = out + h
        return self.ffn(self.LayerNorm(out))


class Mamba4Rec(GenerativeSequentialRecommender):
    r"""Item embedding -> Dropout -> LayerNorm -> ``n_layers`` x [Mamba-1 -> Dropout -> LayerNorm
    (+ residual when ``n_layers > 1``) -> FFN (``inner_size``, GELU)] -> the hidden state at every
    position, scored against the tied item table (dot product, full softmax CE by default).

    Choices:
    - ``reference_init: True`` (default) initialises as the reference code, whose ``_init_weights``
      draws every ``nn.Linear`` and ``nn.Embedding`` from N(0, 0.02) and zeroes every linear bias,
      the Mamba block's included: its ``dt_proj`` bias becomes 0, so dt starts near
      softplus(0) = 0.69 rather than in mamba-ssm's [0.001, 0.1]. ``False`` keeps mamba-ssm's
      initialisation inside the Mamba blocks (A, D and the conv are mamba-ssm's either way).
    - The FFN is the reference's: RecBole's ``FeedForward`` plus a dropout after the activation.
    - No final norm: the last layer's FFN already ends in a LayerNorm.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden_size = config["hidden_size"]
        n_layers = config["n_layers"]
        dropout_prob = config["dropout_prob"]
        inner_size = config["inner_size"]
        if inner_size is None:
            inner_size = 4 * hidden_size
        self.item_embedding = nn.Embedding(self.n_items, hidden_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(
            Mamba4RecLayer(
                hidden_size,
                d_state=config["d_state"],
                d_conv=config["d_conv"],
                expand=config["expand"],
                dropout_prob=dropout_prob,
                inner_size=inner_size,
                residual=n_layers > 1,
                chunk_size=config["chunk_size"],
            )
            for _ in range(n_layers)
        )
        keep = set()
        if not config["reference_init"]:
            keep = {id(m) for layer in self.layers for m in layer.mamba.modules()}
        for module in self.modules():
            if id(module) not in keep:
                self._init_weights(module)

    @staticmethod
    def _init_weights(module):
        # the reference's (and RecBole SASRec's) initialisation
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, item_seq, item_seq_len):
        h = self.LayerNorm(self.emb_dropout(self.item_embedding(item_seq)))
        for layer in self.layers:
            h = layer(h)
        return h
