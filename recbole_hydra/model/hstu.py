"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al. 2024, arXiv 2402.17152).

Follows the authors' research code for the public-dataset experiments (github.com/meta-recsys/
generative-recommenders, ``research/modeling/sequential/hstu.py`` with its input preprocessor,
L2-normalised outputs and sampled softmax), on dense right-padded RecBole batches instead of
jagged tensors.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hydra.model.base import GenerativeSequentialRecommender

TIME_QUERIES = ("current", "next")


def time_buckets(query_times, key_times, num_buckets, divisor=0.301):
    """(B, L, L) bucket of ``|query_times[i] - key_times[j]|``: ``floor(ln(max(gap, 1)) / divisor)``
    clipped to ``[0, num_buckets]``, the reference's bucketisation (gaps in the units of the data,
    seconds for MovieLens). Differences are taken in float64: RecBole stores times as float32."""
    gap = query_times.double().unsqueeze(2) - key_times.double().unsqueeze(1)
    buckets = torch.log(gap.abs().clamp(min=1)) / divisor  # >= 0
    return buckets.clamp(max=num_buckets).long()  # clipped before the cast: inf -> num_buckets


class HSTULayer(nn.Module):
    """One HSTU layer (paper eq 1-3), ``x -> x'`` on ``(B, L, d)``:

        u, v, q, k = SiLU(W_uvqk LayerNorm(x))                      (one fused projection)
        A = SiLU(q k^T + rab) / n, causal                           (per head)
        x' = W_o(Dropout(u * LayerNorm(A v))) + x

    Both LayerNorms are without learned scale and shift, as the reference. ``rab`` is this layer's
    own learned bias per relative position ``i - j`` plus, with time, per time bucket.
    """

    def __init__(
        self,
        hidden_size,
        n_heads,
        attention_dim,
        linear_dim,
        dropout_prob,
        max_len,
        num_time_buckets=None,
        eps=1e-6,
    ):
        super().__init__()
        self.n_heads, self.attention_dim, self.linear_dim, self.eps = (
            n_heads,
            attention_dim,
            linear_dim,
            eps,
        )
        self.uvqk = nn.Linear(hidden_size, 2 * n_heads * (linear_dim + attention_dim), bias=False)
        self.o = nn.Linear(n_heads * linear_dim, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        # only the causal half (i - j >= 0) of the reference's 2 * max_len - 1 position weights
        self.position_bias = nn.Parameter(torch.empty(max_len))
        self.time_bias = (
            nn.Parameter(torch.empty(num_time_buckets + 1)) if num_time_buckets else None
        )
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.xavier_uniform_(self.o.weight)
        nn.init.normal_(self.position_bias, std=0.02)
        if self.time_bias is not None:
            nn.init.normal_(self.time_bias, std=0.02)

    def forward(self, x, causal, distance, buckets, n):
        """causal (L, L) bool; distance (L, L) = max(i - j, 0); buckets (B, L, L) or None; n: the
        divisor of the attention weights."""
        batch, length, hidden = x.shape
        heads = self.n_heads
        u, v, q, k = F.silu(self.uvqk(F.layer_norm(x, (hidden,), eps=self.eps))).split(
            [
                heads * self.linear_dim,
                heads * self.linear_dim,
                heads * self.attention_dim,
                heads * self.attention_dim,
            ],
            dim=-1,
        )
        q = q.view(batch, length, heads, self.attention_dim).transpose(1, 2)  # (B, H, L, dqk)
        k = k.view(batch, length, heads, self.attention_dim).transpose(1, 2)
        v = v.view(batch, length, heads, self.linear_dim).transpose(1, 2)  # (B, H, L, dv)
        rab = self.position_bias[distance]  # (L, L)
        if buckets is not None:
            rab = rab + self.time_bias[buckets]  # (B, L, L)
        scores = torch.matmul(q, k.transpose(-1, -2)) + rab.unsqueeze(-3)  # (B, H, L, L)
        attn = (F.silu(scores) / n).masked_fill(~causal, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, length, heads * self.linear_dim)
        out = u * F.layer_norm(out, (heads * self.linear_dim,), eps=self.eps)
        return self.o(self.dropout(out)) + x


class HSTU(GenerativeSequentialRecommender):
    r"""Item embedding * sqrt(d) + learned absolute position embedding -> Dropout -> padding zeroed
    -> ``n_layers`` HSTU layers -> the hidden state at every position; trained by default with the
    reference's sampled softmax on L2-normalised embeddings (``similarity: cosine``), tau = 0.05.

    Choices where the paper leaves room (reference code followed unless said):
    - ``n`` in ``A = SiLU(q k^T + rab) / n`` is the padded sequence length the model is built for,
      ``MAX_ITEM_LIST_LENGTH`` (the reference divides by its padded length N, a constant), not the
      number of real items: a constant keeps outputs independent of how much padding follows.
      As ``A v`` is layer-normalised right after, n only matters through that norm's eps.
    - ``rab``: the reference's relative bias, one table per layer. Position part: one weight per
      distance ``i - j`` (only the causal half of its table). Time part (when the dataset has a
      time field and ``time_bias`` is on): one weight per bucket ``floor(ln(|gap|) / 0.301)`` in
      ``[0, num_time_buckets]``. The gap is ``t_query(i) - t_j``, where with ``time_query:
      current`` t_query(i) is the time of item i itself, so nothing about the item to predict is
      seen; with ``time_query: next`` it is the time of the next interaction (for the last
      position, the target's), as the reference does, which lets the model know when the
      interaction it predicts happens.
    - Without a time field only the position bias is built (and ``forward`` takes no times).
    - The reference's attention dropout is unused there with this attention (rel_bias) and is
      left out; ``hidden_dropout_prob`` is its linear dropout before ``W_o``.
    - Negatives, optimizer: this package's (``num_negatives`` uniform items shared by the batch;
      RecBole's AdamW with its default betas, where the reference uses betas (0.9, 0.98)).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden_size = config["hidden_size"]
        n_heads = config["n_heads"]
        n_layers = config["n_layers"]
        # ~ = one head's share of hidden_size, then divisible by n_heads (config_schema)
        attention_dim = config["attention_dim"]
        if attention_dim is None:
            attention_dim = hidden_size // n_heads
        linear_dim = config["linear_dim"]
        if linear_dim is None:
            linear_dim = hidden_size // n_heads
        self.hidden_size = hidden_size
        self.time_query = config["time_query"]
        self.num_time_buckets = config["num_time_buckets"]
        self.time_bucket_divisor = float(config["time_bucket_divisor"])
        time_field = getattr(dataset, "time_field", None)
        self.use_time = bool(
            config["time_bias"] and time_field is not None and time_field in dataset.field2type
        )
        self.TIME_FIELD = time_field
        self.TIME_SEQ = f"{time_field}{config['LIST_SUFFIX']}" if time_field else None

        self.item_embedding = nn.Embedding(self.n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden_size)
        self.emb_dropout = nn.Dropout(config["dropout_prob"])
        self.layers = nn.ModuleList(
            HSTULayer(
                hidden_size,
                n_heads,
                attention_dim,
                linear_dim,
                dropout_prob=config["hidden_dropout_prob"],
                max_len=self.max_seq_length,
                num_time_buckets=self.num_time_buckets if self.use_time else None,
                eps=float(config["layer_norm_eps"]),
            )
            for _ in range(n_layers)
        )
        # the reference: items N(0, 0.02^2), positions N(0, 1/d), both truncated at 2 std
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02, a=-0.04, b=0.04)
        std = math.sqrt(1.0 / hidden_size)
        nn.init.trunc_normal_(self.position_embedding.weight, std=std, a=-2 * std, b=2 * std)

    def _forward_inputs(self, interaction):
        if not self.use_time:
            return {}
        times = interaction[self.TIME_SEQ]
        inputs = {"timestamps": times}
        if self.time_query == "next":
            inputs["query_timestamps"] = self._next_items(
                times, interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_FIELD].to(times.dtype)
            )
        return inputs

    def forward(self, item_seq, item_seq_len, timestamps=None, query_timestamps=None):
        """item_seq (B, L) right-padded; timestamps (B, L) of those items (needed with time bias);
        query_timestamps (B, L): with ``time_query: next``, the time of the item each position
        predicts."""
        length = item_seq.size(1)
        if length > self.max_seq_length:
            raise ValueError(
                f"sequence length {length} exceeds MAX_ITEM_LIST_LENGTH {self.max_seq_length}"
            )
        x = self.item_embedding(item_seq) * math.sqrt(self.hidden_size)
        x = self.emb_dropout(x + self.position_embedding.weight[:length])
        x = x * (item_seq != 0).unsqueeze(-1)
        positions = torch.arange(length, device=item_seq.device)
        offset = positions.unsqueeze(1) - positions.unsqueeze(0)  # i - j
        causal, distance = offset >= 0, offset.clamp(min=0)
        buckets = None
        if self.use_time:
            if timestamps is None:
                raise ValueError("this HSTU has a time bias: pass timestamps (B, L)")
            queries = timestamps
            if self.time_query == "next":
                if query_timestamps is None:
                    raise ValueError("time_query: next needs query_timestamps (B, L)")
                queries = query_timestamps
            buckets = time_buckets(
                queries, timestamps, self.num_time_buckets, self.time_bucket_divisor
            )
        for layer in self.layers:
            x = layer(x, causal, distance, buckets, self.max_seq_length)
        return x
