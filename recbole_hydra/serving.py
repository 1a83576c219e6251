"""Streaming recommendations: update a user's top-k in O(1) per new event.

Hydra's history is a fixed-size state per layer (each latent Mamba's conv window and SSM state),
so a new interaction updates the recommendations with one recurrent step, without re-reading the
history (the paper's Table 2 argument: inference cost independent of n). Attention models (SASRec,
HSTU) must re-read the sequence or keep a cache that grows with it.

    streamer = StreamingRecommender.from_checkpoint("saved/Hydra-....pth")
    state = streamer.init_state([12, 7, 99])          # internal item ids, oldest first
    state = streamer.update(state, 31)                # one new event
    scores = streamer.scores(state)                   # (1, n_items), as full_sort_predict
    values, items = streamer.topk(state, 10, exclude=[12, 7, 99, 31])

What the model sees: the state summarises the WHOLE history, also beyond the training window
``MAX_ITEM_LIST_LENGTH`` (positions keep counting for RoPE), and scores equal a full forward over
the whole sequence. A model trained on windows of ``MAX_ITEM_LIST_LENGTH`` items has never seen
positions past it; ``RecBole``'s evaluation of the same checkpoint truncates to the window, so
streaming scores for long histories differ from RecBole's by design.
"""

from typing import NamedTuple, Sequence, Tuple

import torch

from recbole_hydra.checkpoint import load_data_and_model, load_model
from recbole_hydra.errors import UsageError
from recbole_hydra.layers.losses import similarity_scores
from recbole_hydra.layers.mamba2 import Mamba2Cache
from recbole_hydra.model.hydra import Hydra


class StreamState(NamedTuple):
    """A batch of users' streaming states: plain tensors, batch first (save with torch.save)."""

    position: torch.Tensor  # (b,) items seen so far
    hidden: torch.Tensor  # (b, d) last layer's output at the newest item
    conv_states: Tuple[torch.Tensor, ...]  # per layer (b, conv_dim, d_conv)
    ssm_states: Tuple[torch.Tensor, ...]  # per layer (b, nheads, headdim, d_state)


# A state is tensors in a named tuple: let torch.load(weights_only=True) rebuild it.
torch.serialization.add_safe_globals([StreamState])


class StreamingRecommender:
    def __init__(self, model: Hydra):
        if not isinstance(model, Hydra):
            raise TypeError(f"streaming needs a Hydra model, got {type(model).__name__}")
        self.model = model.eval()
        self.n_items = model.n_items

    @classmethod
    def from_checkpoint(cls, path, device="cpu", trust=False):
        """A checkpoint of Hydra (``saved/Hydra-*.pth``), without loading its dataset;
        ``trust``: also read a pickled RecBole checkpoint."""
        return cls(load_model(path, device, model_class=Hydra, trust=trust))

    # -- states ------------------------------------------------------------------------------
    def _check_items(self, items):
        bad = (items < 1) | (items >= self.n_items)
        if bad.any():
            raise ValueError(
                f"item id {int(items[bad][0])} is not an internal item id of this model "
                f"(1..{self.n_items - 1}); map tokens with dataset.token2id('item_id', ...)"
            )

    @torch.no_grad()
    def init_state(self, histories) -> StreamState:
        """States after ``histories``: one history (a 1-D list/tensor of internal item ids) or a
        list of them (a batch). One chunked pass over each history."""
        device = self.model.item_embedding.weight.device
        if len(histories) == 0:
            raise ValueError("the history is empty: a state starts from at least one item")
        if (
            isinstance(histories, torch.Tensor)
            and histories.dim() == 1
            or (len(histories) and not isinstance(histories[0], (Sequence, torch.Tensor)))
        ):
            histories = [histories]
        seqs = [torch.as_tensor(h, dtype=torch.long, device=device).reshape(-1) for h in histories]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("a history is empty: a state starts from at least one item")
        for s in seqs:
            self._check_items(s)
        lengths = torch.tensor([len(s) for s in seqs], device=device)
        padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        hidden, caches = self.model.forward_with_caches(padded, lengths)
        last = hidden[torch.arange(len(seqs), device=device), lengths - 1]
        return StreamState(
            lengths, last, tuple(c.conv_state for c in caches), tuple(c.ssm_state for c in caches)
        )

    @torch.no_grad()
    def update(self, state: StreamState, item_ids) -> StreamState:
        """Advance every user of ``state`` by one event (``item_ids``: an int or (b,) ids)."""
        items = torch.as_tensor(item_ids, dtype=torch.long, device=state.hidden.device).reshape(-1)
        if items.numel() != state.position.numel():
            raise ValueError(f"update got {items.numel()} items for {state.position.numel()} users")
        self._check_items(items)
        caches = [Mamba2Cache(c, s) for c, s in zip(state.conv_states, state.ssm_states)]
        hidden, caches = self.model.step(items, state.position, caches)
        return StreamState(
            state.position + 1,
            hidden,
            tuple(c.conv_state for c in caches),
            tuple(c.ssm_state for c in caches),
        )

    @staticmethod
    def batch(states: Sequence[StreamState]) -> StreamState:
        """Concatenate users' states into one batch."""
        return StreamState(
            torch.cat([s.position for s in states]),
            torch.cat([s.hidden for s in states]),
            tuple(torch.cat(layer) for layer in zip(*(s.conv_states for s in states))),
            tuple(torch.cat(layer) for layer in zip(*(s.ssm_states for s in states))),
        )

    @staticmethod
    def select(state: StreamState, index) -> StreamState:
        """The users ``index`` (an int, slice or index tensor) of a batched state."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return StreamState(
            state.position[index],
            state.hidden[index],
            tuple(c[index] for c in state.conv_states),
            tuple(s[index] for s in state.ssm_states),
        )

    # -- recommendations ---------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, state: StreamState) -> torch.Tensor:
        """(b, n_items) scores, as ``Hydra.full_sort_predict`` over the whole history."""
        m = self.model
        return similarity_scores(state.hidden, m.item_table(), m.similarity) / m.temperature

    @torch.no_grad()
    def topk(self, state: StreamState, k, exclude=None):
        """(values, item ids), each (b, k); padding item 0 and ``exclude`` (ids, applied to every
        user) never recommended."""
        scores = self.scores(state)
        scores[:, 0] = -torch.inf
        excluded = 1
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long, device=scores.device)
            scores[:, exclude] = -torch.inf
            excluded = len(torch.unique(torch.cat([exclude.flatten(), exclude.new_zeros(1)])))
        candidates = scores.shape[1] - excluded
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= candidates:
            raise ValueError(
                f"k must be an integer from 1 to {candidates} (the items left to recommend), "
                f"got {k!r}"
            )
        return scores.topk(k, dim=-1)


def recommend(checkpoint, users, k=10, replay=0, out=None, err=None, trust=False):
    """Print top-``k`` item tokens for user tokens ``users`` from a Hydra checkpoint.

    A user's history is what RecBole's test split holds for them (the newest
    ``MAX_ITEM_LIST_LENGTH`` items and the test item); already-seen items are not recommended.
    ``replay > 0`` starts from the history without its last ``replay`` events and feeds those
    one at a time, printing the top-k after each: the O(1) update in action. A user whose
    history is too short for ``replay`` replays all but its first event, with a warning line on
    ``err`` (stderr) saying so; the users after it replay ``replay`` events as asked.
    """
    import sys

    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ValueError(f"replay must be a non-negative integer, got {replay!r}")
    out = out or sys.stdout
    err = err or sys.stderr
    config, model, dataset, _, _, test = load_data_and_model(checkpoint, trust=trust)
    if not isinstance(model, Hydra):
        raise UsageError(
            f"{checkpoint} holds a {type(model).__name__} model; --recommend needs "
            "a Hydra checkpoint"
        )
    streamer = StreamingRecommender(model.to("cpu"))
    inter = test.dataset.inter_feat
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    for user in users:
        try:
            uid = int(dataset.token2id(uid_field, str(user)))
        except ValueError:
            raise ValueError(
                f"unknown user {user!r}: user tokens as in the dataset's .inter file"
            ) from None
        rows = (inter[uid_field] == uid).nonzero().flatten()
        if len(rows) == 0:
            raise ValueError(f"user {user!r} has no test history to recommend from")
        row = inter[rows[-1:]]
        history = row[model.ITEM_SEQ][0, : int(row[model.ITEM_SEQ_LEN][0])].tolist() + [
            int(row[iid_field][0])
        ]
        n_replay = min(replay, len(history) - 1)  # this user's; a short history caps only its own
        if n_replay < replay:
            err.write(
                f"warning: user {user} has {len(history)} events in its test history (at most "
                f"MAX_ITEM_LIST_LENGTH={config['MAX_ITEM_LIST_LENGTH']} and the test item): "
                f"replaying its last {n_replay}, not {replay}\n"
            )
        state = streamer.init_state(history[: len(history) - n_replay])
        events = history[len(history) - n_replay :]
        for step in range(n_replay + 1):
            seen = history[: len(history) - n_replay + step]
            _, items = streamer.topk(state, k, exclude=seen)
            tokens = dataset.id2token(iid_field, items[0].tolist())
            label = (
                f"after {dataset.id2token(iid_field, [seen[-1]])[0]}"
                if replay
                else f"{len(seen)} events"
            )
            out.write(f"user {user} ({label}): {' | '.join(map(str, tokens))}\n")
            if step < n_replay:
                state = streamer.update(state, events[step])
