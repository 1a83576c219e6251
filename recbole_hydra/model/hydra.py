"""Hydra: multi-head latent Mamba-2 for sequential recommendation (Yuan 2025, arXiv 2504.07398)."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from recbole_hydra.data.item_text import item_texts
from recbole_hydra.layers.hydra_layer import HydraLayer
from recbole_hydra.layers.item_llm import ItemLLMEncoder
from recbole_hydra.layers.norms import RMSNorm
from recbole_hydra.model.base import GenerativeSequentialRecommender

ITEM_MODELS = ("embedding", "llm")


class Hydra(GenerativeSequentialRecommender):
    r"""Item embedding (or item LLM) -> Dropout -> RMSNorm (eq 3) -> ``n_layers`` Hydra layers
    (eq 5-12) -> the hidden state at every position, scored against the tied item table (eq 13).

    Choices beyond the paper and docs/paper-reading.md:
    - ``head_size`` (d_c) defaults to ``hidden_size // n_heads``; the latent width ``n_heads *
      head_size`` may differ from ``hidden_size`` (W_X, W_Z and W_out map between them).
    - No final norm after the last layer: eq 13 scores the last layer's output directly.
    - Candidates are the raw embedding rows ``E`` (eq 13, 15), not their dropout/RMSNorm view.
    - Each latent head is a Mamba-2 block with ``ngroups = 1`` and one SSD head of width
      ``expand * head_size`` unless ``ssd_headdim`` says otherwise. ``share_bc: True`` (off by
      default) gives all heads one B and one C, projected from the whole X: cheaper, but the heads
      are no longer independent as eq 7-8 has them.

    ``item_model: llm`` (section 4.1.2): H0 comes from an LLM reading each item's text
    (``recbole_hydra.layers.item_llm.ItemLLMEncoder``) instead of an ID embedding; candidates are
    then the encoder's H0 rows. Each training step runs inside the encoder's ``step()``, so each
    distinct item (input, positive, negative) is encoded once; in eval mode the encoder's item
    table is computed once and reused.

    ``layer_checkpointing: True`` keeps only each layer's input for backward and recomputes the
    layer there (``torch.utils.checkpoint``): the activations kept while training shrink to one
    ``(batch, length, hidden_size)`` tensor per layer, for one more forward pass of every layer.
    ``checkpoint_slices: k`` cuts the batch into ``k`` slices of sequences, each checkpointed on
    its own: a layer mixes nothing across sequences, so the result is the same (up to the dropout
    draws of ``hidden_dropout_prob``, drawn per slice), and backward recomputes, uses and frees
    one slice's activations at a time, so the peak while a layer is recomputed is about one
    slice's rather than the whole batch's.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden_size = config["hidden_size"]
        n_heads = config["n_heads"]
        head_size = config["head_size"]
        if head_size is None:  # hidden_size is then divisible by n_heads (config_schema)
            head_size = hidden_size // n_heads
        ffn_inner_size = config["ffn_inner_size"]
        if ffn_inner_size is None:
            ffn_inner_size = hidden_size
        self.item_model = config["item_model"]
        if self.item_model == "embedding":
            self.item_embedding = nn.Embedding(self.n_items, hidden_size, padding_idx=0)
        self.layer_checkpointing = config["layer_checkpointing"]
        self.checkpoint_slices = config["checkpoint_slices"]
        self.emb_dropout = nn.Dropout(config["dropout_prob"])
        self.emb_norm = RMSNorm(hidden_size)
        self.layers = nn.ModuleList(
            HydraLayer(
                hidden_size,
                n_heads,
                head_size,
                ffn_inner_size=ffn_inner_size,
                rope_base=config["rope_base"],
                pre_norm=i > 0,
                hidden_dropout_prob=config["hidden_dropout_prob"],
                rope_on_z=config["rope_on_z"],
                gate_with_z=config["gate_with_z"],
                norm=config["norm_placement"],
                d_state=config["d_state"],
                d_conv=config["d_conv"],
                expand=config["expand"],
                headdim=config["ssd_headdim"],
                chunk_size=config["chunk_size"],
                share_bc=config["share_bc"],
            )
            for i in range(config["n_layers"])
        )
        self.apply(self._init_weights)
        # Built after the initialisation above, which would overwrite the LLM's embeddings.
        self.item_encoder = None
        if self.item_model == "llm":
            texts = item_texts(dataset, config["item_text_fields"], config["item_prompt"])
            self.item_encoder = ItemLLMEncoder.from_config(config, texts, hidden_size)

    def _init_weights(self, module):
        # Embeddings as SASRec's (normal, std 0.02); the Mamba-2 blocks keep mamba-ssm's own
        # initialisation, which their constructor sets.
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _item_vectors(self, item_ids):
        if self.item_encoder is None:
            return super()._item_vectors(item_ids)
        return self.item_encoder(item_ids)

    def _item_table(self):
        if self.item_encoder is None:
            return super()._item_table()
        return self.item_encoder.table()

    def calculate_loss(self, interaction):
        if self.item_encoder is None:
            return super().calculate_loss(interaction)
        with self.item_encoder.step():  # inputs, positives and negatives: each item encoded once
            return super().calculate_loss(interaction)

    def forward(self, item_seq, item_seq_len):
        h = self._embed(item_seq)
        recompute = self.layer_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                # Autograd runs the slices' backward one after another (the last slice's nodes
                # are the newest), so only one slice's recomputed activations live at a time.
                slices = h.chunk(self.checkpoint_slices)
                h = torch.cat([checkpoint(layer, part, use_reentrant=False) for part in slices])
            else:
                h = layer(h)
        return h

    def _last_hidden(self, interaction):
        return self._last_output(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def _last_output(self, item_seq, item_seq_len):
        """``forward`` at the last real position of each row, ``(b, d)``. Scoring needs only that
        position, so the last layer computes only it (``HydraLayer.forward_last``)."""
        h = self._embed(item_seq)
        for layer in self.layers[:-1]:
            h = layer(h)
        return self.layers[-1].forward_last(h, item_seq_len)

    def _embed(self, item_seq):
        return self.emb_norm(self.emb_dropout(self._item_vectors(item_seq)))  # eq 3

    # -- streaming inference (recbole_hydra.serving) -------------------------------------------
    def item_table(self):
        """(n_items, d): what the hidden states are scored against (row 0 is padding)."""
        return self._item_table()

    def forward_with_caches(self, item_seq, item_seq_len):
        """``forward`` -> ``(hidden (b, l, d), caches)``, ``caches`` holding each layer's
        latent-Mamba cache (``Mamba2Cache``) after the last real item of each row: where ``step``
        continues from."""
        h, caches = self._embed(item_seq), []
        for layer in self.layers:
            h, cache = layer(h, lengths=item_seq_len, return_cache=True)
            caches.append(cache)
        return h, caches

    def step(self, item_t, position, caches):
        """One new item per row, O(1) in the history length: ``item_t (b,)`` at ``position (b,)``
        (0 = first item) and the caches after the items before it -> ``(hidden (b, d), caches
        after it)``; the given caches are not modified."""
        h, new_caches = self._embed(item_t), []
        for layer, cache in zip(self.layers, caches):
            h, cache = layer.step(h, position, cache)
            new_caches.append(cache)
        return h, new_caches
