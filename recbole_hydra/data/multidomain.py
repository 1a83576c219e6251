"""Multi-domain sequential data for ``HydraMD`` (Hydra paper section 4.4, 5.2), as a RecBole
dataset.

Where the domains come from (``DOMAIN_FIELD``, default ``domain``; ``domains``, default ``~``):

- one ``<name>.inter`` with a ``domain:token`` column: every interaction names its domain.
  ``domains: [a, b]`` keeps only those domains (and orders the per-domain tables); ``~`` keeps all.
- several single-domain datasets merged by user id: ``domains: [amazon-books, amazon-movies-tv]``
  and no ``<name>.inter`` in ``<data_path>/<name>/``: each domain is read from
  ``<data_path>/<domain>/<domain>.inter`` (its ``.item`` and ``.user`` too, when ``load_col``
  asks for them), RecBole's loader reading each file, and the domain column is its name. User
  tokens are shared across the files (that is the merge); item tokens must not be.

Everything after loading is RecBole's: filtering (``user_inter_num_interval`` etc. apply to the
merged data), id remapping, feature preparation. Every item must belong to exactly one domain (an
item token seen in two domains is an error): a domain's candidates are its items.

Sequences, per user, in chronological order (RecBole's stable sort by user then time, ties in file
order): the merged sequence of all the user's interactions, and one sequence per domain, its
restriction to that domain.

Leave-one-out per domain. For each (user, domain) with ``c`` interactions in that domain, exactly
as RecBole's leave-one-out on that domain's data alone: ``c >= 4``: the last is the test target,
the one before the valid target; ``c == 3``: the last is the test target, no valid; ``c <= 2``: no
evaluation target (a documented skip: the domain sequence before the target would be too short
to leave one out, and a target with no history in its own domain is never evaluated). So the
valid/test rows of a domain are exactly those a single-domain Hydra on that domain's data gets.

How that interacts with the merged sequence:

- Evaluation row (target at time t in domain s): the domain context is the user's domain-s items
  before the target (at most ``MAX_ITEM_LIST_LENGTH``, the newest); the merged context is the
  user's items of all domains strictly before the target in the chronological order (at most
  ``MAX_MERGED_LIST_LENGTH``, the newest). Both may contain earlier valid/test items (of domain s,
  as RecBole's own test row contains the valid item, or of other domains): they are the user's
  past at time t, never the target or anything after it.
- Training: every valid and test item of every domain is removed from the user's history first.
  The training merged sequence and the training domain sequences are built from what remains, so
  valid/test items never appear in a training target nor in a training context. (Training items
  of one domain may be newer than another domain's test item: as in any per-user leave-one-out.)

Rows (all vectorised with numpy on RecBole's ``Interaction``, like ``GenerativeSequentialDataset``):

- valid / test, one row per evaluation target: ``user_id``, ``item_id`` (target), ``domain``
  (the target's domain), ``item_id_list``/``item_length`` (domain context),
  ``merged_item_id_list``/``merged_item_length`` (merged context).
- train, generative (paper eq 15-17): one row per user window. Merged windows tile the training
  merged sequence (``MAX_MERGED_LIST_LENGTH`` inputs, every position predicting the next item, the
  last one the row's ``item_id``); domain windows tile each training domain sequence
  (``MAX_ITEM_LIST_LENGTH`` inputs, target ``domain_target``), newest window first; row w of a user
  holds the user's w-th merged window and w-th window of each domain (either may be empty: length
  0). ``merged_item_id_list (R, Lm)``, ``merged_item_length (R,)``, ``item_id (R,)``,
  ``domain_item_id_list (R, S, L)``, ``domain_item_length (R, S)``, ``domain_target (R, S)``
  (column d-1 is domain id d). ``max_windows_per_user`` caps the windows per sequence (0 = all).
  The losses of the merged and the domain windows are separate sums, so packing windows of
  different times into one row changes nothing but the batching.

``build()`` returns these three splits instead of RecBole's by-user split (which cannot leave one
out per domain); the rest of RecBole (dataloaders, Trainer) is used unchanged. Only
``train_mode: generative`` is supported.

Bad input, all ``ValueError`` with one line: no domain column and no ``domains``; a name in
``domains`` that is neither a value of the domain column nor a dataset folder; an item in two
domains; fewer than two domains; a domain with fewer than two items, or with no valid or no test
row (no user with at least four interactions in it).
"""

import os

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils.enum_type import FeatureSource, FeatureType

MERGED_PREFIX = "merged_"
DOMAIN_PREFIX = "domain_"
DOMAIN_TARGET = "domain_target"
SPLITS = ("train", "valid", "test")


class MultiDomainError(ValueError):
    """Bad multi-domain input; one line."""


def domain_sources(config):
    """``None`` when the dataset's own ``.inter`` exists (domain column mode), else the list of
    ``(domain, folder)`` to merge. Raises ``MultiDomainError`` when neither works."""
    dataset, data_path = config["dataset"], config["data_path"]
    if os.path.isfile(os.path.join(data_path, f"{dataset}.inter")):
        return None
    domains = config["domains"]
    if not domains:
        raise MultiDomainError(
            f"{os.path.join(data_path, dataset + '.inter')} does not exist and no domains are "
            "given: put a .inter with a domain:token column there, or set domains: [name, ...] to "
            "merge single-domain datasets"
        )
    if isinstance(domains, str):
        raise MultiDomainError(f"domains must be a list of names, got {domains!r}")
    root = os.path.dirname(os.path.normpath(data_path))
    missing = [d for d in domains if not os.path.isfile(os.path.join(root, str(d), f"{d}.inter"))]
    if missing:
        raise MultiDomainError(
            f"unknown domain dataset(s) {', '.join(map(str, missing))}: merging needs "
            + ", ".join(os.path.join(root, str(d), f"{d}.inter") for d in missing)
        )
    if len(set(map(str, domains))) != len(domains):
        raise MultiDomainError(f"domains lists a name twice: {domains}")
    return [(str(d), os.path.join(root, str(d))) for d in domains]


def window_slices(group_first, n, max_len, max_windows):
    """Generative windows over sequences stored back to back.

    ``group_first`` (G,): index of each sequence's first element in an array of ``n``. Returns
    ``(target, start, window)``: per window, the index of its last target, of its first input
    (inputs are ``[start, target)``) and its number counted from the newest (0). Windows tile
    each sequence's targets (every element but the first) without overlap, newest first, as
    ``GenerativeSequentialDataset`` does; ``max_windows > 0`` keeps the newest ``max_windows``.
    """
    counts = np.diff(np.r_[group_first, n])
    first = np.repeat(group_first, counts)
    last = np.repeat(group_first + counts - 1, counts)
    k = np.arange(n) - first  # position inside the sequence
    back = last - np.arange(n)
    keep = (k >= 1) & (back % max_len == 0)
    if max_windows > 0:
        keep &= back // max_len < max_windows
    target = np.flatnonzero(keep)
    start = np.maximum(first[target], target - max_len)
    return target, start, back[target] // max_len


def gather_windows(values, start, end, max_len):
    """``values[start:end]`` per row, right-padded with 0 to ``max_len`` -> (rows, max_len)."""
    offsets = np.arange(max_len)
    length = end - start
    index = start[:, None] + offsets[None, :]
    pad = offsets[None, :] >= length[:, None]
    out = values[np.where(pad, 0, index)] if len(values) else np.zeros(index.shape, values.dtype)
    out[pad] = 0
    return torch.from_numpy(out), torch.from_numpy(length.astype(np.int64))


def group_starts(*keys):
    """First index of each run of equal consecutive ``keys`` tuples."""
    n = len(keys[0])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


class MultiDomainSequentialDataset(SequentialDataset):
    """See the module docstring. After construction: ``domain_field``, ``domain_ids`` (RecBole ids
    of the domains, in table order), ``domain_names`` (their tokens, same order), ``item_domain``
    (numpy, ``n_items``: domain id of each item, 0 for padding and for items of no domain)."""

    def __init__(self, config):
        self.domain_field = config["DOMAIN_FIELD"]
        self.max_merged_len = int(config["MAX_MERGED_LIST_LENGTH"])
        train_mode = config["train_mode"]
        if train_mode != "generative":
            raise MultiDomainError(
                f"multi-domain data supports train_mode: generative only, got {train_mode!r}"
            )
        split = (config["eval_args"] or {}).get("split") or {}
        if "LS" not in split:
            raise MultiDomainError(
                "multi-domain data needs the leave-one-out split "
                "(eval_args: {split: {LS: valid_and_test}})"
            )
        if int(config["MAX_ITEM_LIST_LENGTH"]) < 1 or self.max_merged_len < 1:
            raise MultiDomainError("MAX_ITEM_LIST_LENGTH and MAX_MERGED_LIST_LENGTH must be >= 1")
        self._sources = domain_sources(config)
        super().__init__(config)

    # -- loading -------------------------------------------------------------------------------
    def _get_load_and_unload_col(self, source):
        load_col, unload_col = super()._get_load_and_unload_col(source)
        is_inter = (source.value if isinstance(source, FeatureSource) else source) == "inter"
        if is_inter and load_col:  # an explicit list: add the columns the sequences are made of
            needed = {self.uid_field, self.iid_field, self.time_field}
            if self._sources is None:
                needed.add(self.domain_field)
            load_col = set(load_col) | {f for f in needed if f}
        return load_col, unload_col

    def _check_columns(self, feat, path):
        for key in ("uid_field", "iid_field", "time_field"):
            field = getattr(self, key)
            if not field or feat is None or field not in feat:
                raise MultiDomainError(
                    f"{path} has no {field!r} column ({key}): sequences need user, item and time"
                )

    def _load_data(self, token, dataset_path):
        if self._sources is None:
            super()._load_data(token, dataset_path)
            self._check_columns(self.inter_feat, os.path.join(dataset_path, token + ".inter"))
            if self.domain_field not in self.inter_feat:
                raise MultiDomainError(
                    f"{os.path.join(dataset_path, token + '.inter')} has no {self.domain_field!r} "
                    f"column: add a {self.domain_field}:token column, set DOMAIN_FIELD, or merge "
                    "single-domain datasets with domains: [name, ...]"
                )
            self._keep_domains()
            return
        frames, users, items = [], [], []
        for name, folder in self._sources:
            path = os.path.join(folder, f"{name}.inter")
            feat = self._load_feat(path, FeatureSource.INTERACTION)
            self._check_columns(feat, path)
            feat[self.domain_field] = name
            frames.append(feat)
            users.append(
                self._load_user_or_item_feat(name, folder, FeatureSource.USER, "uid_field")
            )
            items.append(
                self._load_user_or_item_feat(name, folder, FeatureSource.ITEM, "iid_field")
            )
        self.inter_feat = pd.concat(frames, ignore_index=True)
        self.field2type[self.domain_field] = FeatureType.TOKEN
        self.field2source[self.domain_field] = FeatureSource.INTERACTION
        self.field2seqlen[self.domain_field] = 1
        self.user_feat = self._concat(users, self.uid_field)
        self.item_feat = self._concat(items, self.iid_field)
        self._load_additional_feat(token, dataset_path)

    @staticmethod
    def _concat(frames, key):
        frames = [f for f in frames if f is not None]
        if not frames:
            return None
        return pd.concat(frames, ignore_index=True).drop_duplicates(subset=[key], keep="first")

    def _keep_domains(self):
        wanted = self.config["domains"]
        present = sorted(self.inter_feat[self.domain_field].astype(str).unique())
        if not wanted:
            return
        if isinstance(wanted, str):
            raise MultiDomainError(f"domains must be a list of names, got {wanted!r}")
        unknown = [str(d) for d in wanted if str(d) not in present]
        if unknown:
            raise MultiDomainError(
                f"unknown domain(s) {', '.join(unknown)}: "
                f"the {self.domain_field!r} column has {', '.join(present)}"
            )
        keep = self.inter_feat[self.domain_field].astype(str).isin([str(d) for d in wanted])
        self.inter_feat = self.inter_feat[keep.values].reset_index(drop=True)

    # -- after RecBole's processing: the item -> domain map and the checks -------------------------
    def _data_processing(self):
        super()._data_processing()
        self._index_domains()

    def _index_domains(self):
        inter = self.inter_feat
        field, tokens = self.domain_field, self.field2id_token[self.domain_field]
        wanted = [str(d) for d in self.config["domains"] or []]
        present = sorted(set(np.unique(inter[field].values)) - {0})
        names = [str(tokens[d]) for d in present]
        emptied = [w for w in wanted if w not in names]
        if emptied:
            raise MultiDomainError(
                f"domain(s) {emptied} have no interactions left after RecBole's filtering "
                f"(user_inter_num_interval, item_inter_num_interval, ...); present: {names}: "
                "relax the filters or drop them from domains: [...]"
            )
        order = [names.index(w) for w in wanted] if wanted else np.argsort(names)
        self.domain_ids = [int(present[i]) for i in order]
        self.domain_names = [names[i] for i in order]
        if len(self.domain_ids) < 2:
            raise MultiDomainError(
                f"multi-domain data needs at least two domains, got {self.domain_names}"
            )
        pairs = np.unique(np.stack([inter[self.iid_field].values, inter[field].values], 1), axis=0)
        items, n_domains = np.unique(pairs[:, 0], return_counts=True)
        if (n_domains > 1).any():
            bad = items[n_domains > 1]
            shown = ", ".join(repr(str(self.field2id_token[self.iid_field][i])) for i in bad[:3])
            raise MultiDomainError(
                f"{len(bad)} item(s) belong to several domains (e.g. {shown}): "
                "every item must have one domain"
            )
        self.item_domain = np.zeros(self.item_num, dtype=np.int64)
        self.item_domain[pairs[:, 0]] = pairs[:, 1]
        counts = (
            pd.DataFrame({"u": inter[self.uid_field].values, "d": inter[field].values})
            .groupby(["d", "u"])
            .size()
        )
        per_domain = counts.groupby(level=0)
        for d, name in zip(self.domain_ids, self.domain_names):
            n_items = int((self.item_domain == d).sum())
            c = per_domain.get_group(d).values
            if n_items < 2:
                raise MultiDomainError(
                    f"domain {name!r} has {n_items} item(s): ranking needs at least two; "
                    "drop it with domains: [...]"
                )
            if not (c >= 4).any():
                raise MultiDomainError(
                    f"domain {name!r} has no user with at least 4 interactions in it "
                    f"(most: {c.max()}), so "
                    "leave-one-out gives it no valid and test target; drop it with domains: [...]"
                )

    # -- rows -----------------------------------------------------------------------------------
    def build(self):
        self._change_feat_format()  # -> data_augmentation
        return [self.copy(self._split_feats[s]) for s in SPLITS]

    def data_augmentation(self):
        self._check_field("uid_field", "time_field")
        self.item_id_list_field = self.iid_field + self.config["LIST_SUFFIX"]
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        inter = self.inter_feat
        uid = inter[self.uid_field].numpy()
        item = inter[self.iid_field].numpy()
        dom = inter[self.domain_field].numpy()
        split = self.loo_split(uid, dom)
        self._split_feats = {
            "train": self._train_rows(uid, item, dom, np.flatnonzero(split == 0)),
            "valid": self._eval_rows(uid, item, dom, np.flatnonzero(split == 1)),
            "test": self._eval_rows(uid, item, dom, np.flatnonzero(split == 2)),
        }
        self._set_list_fields()

    @staticmethod
    def loo_split(uid, dom):
        """0 train, 1 valid, 2 test for each interaction (chronological order within users):
        per (user, domain) with c interactions, test = the last if c >= 3, valid = the one before
        if c >= 4 (RecBole's leave-one-out on that domain's prefix rows)."""
        n = len(uid)
        order = np.lexsort((dom, uid))  # stable: time order inside each (user, domain)
        first = group_starts(uid[order], dom[order])
        counts = np.diff(np.r_[first, n])
        k = np.arange(n) - np.repeat(first, counts)
        c = np.repeat(counts, counts)
        split = np.zeros(n, dtype=np.int8)
        split[order[(c >= 4) & (k == c - 2)]] = 1
        split[order[(c >= 3) & (k == c - 1)]] = 2
        return split

    def _eval_rows(self, uid, item, dom, rows):
        """Evaluation rows for the interactions ``rows`` (indices into the chronological arrays)."""
        n = len(uid)
        user_first = np.repeat(group_starts(uid), np.diff(np.r_[group_starts(uid), n]))
        merged_start = np.maximum(user_first[rows], rows - self.max_merged_len)
        merged, merged_len = gather_windows(item, merged_start, rows, self.max_merged_len)
        order = np.lexsort((dom, uid))
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        first = group_starts(uid[order], dom[order])
        group_first = np.repeat(first, np.diff(np.r_[first, n]))
        end = position[rows]
        start = np.maximum(group_first[end], end - self.max_item_list_len)
        context, length = gather_windows(item[order], start, end, self.max_item_list_len)
        return Interaction(
            {
                self.uid_field: torch.from_numpy(uid[rows]),
                self.iid_field: torch.from_numpy(item[rows]),
                self.domain_field: torch.from_numpy(dom[rows]),
                self.item_id_list_field: context,
                self.item_list_length_field: length,
                MERGED_PREFIX + self.item_id_list_field: merged,
                MERGED_PREFIX + self.item_list_length_field: merged_len,
            }
        )

    def _train_rows(self, uid, item, dom, keep):
        """Generative training rows from the training interactions ``keep`` only."""
        uid, item, dom = uid[keep], item[keep], dom[keep]
        n, n_dom = len(uid), len(self.field2id_token[self.domain_field]) - 1
        windows = self.config["max_windows_per_user"]
        windows = 0 if windows is None else int(windows)
        m_target, m_start, m_w = window_slices(group_starts(uid), n, self.max_merged_len, windows)
        order = np.lexsort((dom, uid))
        d_target, d_start, d_w = window_slices(
            group_starts(uid[order], dom[order]), n, self.max_item_list_len, windows
        )
        d_uid, d_col = uid[order][d_target], dom[order][d_target] - 1
        # row (user, w): rows per user = the most windows any of its sequences has
        n_users = int(uid.max()) + 1 if n else 0
        per_user = np.zeros(n_users, dtype=np.int64)
        np.maximum.at(per_user, uid[m_target], m_w + 1)
        np.maximum.at(per_user, d_uid, d_w + 1)
        offset = np.r_[0, np.cumsum(per_user)[:-1]] if n_users else per_user
        n_rows = int(per_user.sum())
        row_user = np.repeat(np.arange(n_users), per_user)

        merged = torch.zeros(n_rows, self.max_merged_len, dtype=torch.long)
        merged_len = torch.zeros(n_rows, dtype=torch.long)
        target = torch.zeros(n_rows, dtype=torch.long)
        m_row = torch.from_numpy(offset[uid[m_target]] + m_w)
        merged[m_row], merged_len[m_row] = gather_windows(
            item, m_start, m_target, self.max_merged_len
        )
        target[m_row] = torch.from_numpy(item[m_target])

        dom_seq = torch.zeros(n_rows, n_dom, self.max_item_list_len, dtype=torch.long)
        dom_len = torch.zeros(n_rows, n_dom, dtype=torch.long)
        dom_target = torch.zeros(n_rows, n_dom, dtype=torch.long)
        d_row = torch.from_numpy(offset[d_uid] + d_w)
        d_col = torch.from_numpy(d_col)
        dom_seq[d_row, d_col], dom_len[d_row, d_col] = gather_windows(
            item[order], d_start, d_target, self.max_item_list_len
        )
        dom_target[d_row, d_col] = torch.from_numpy(item[order][d_target])
        return Interaction(
            {
                self.uid_field: torch.from_numpy(row_user),
                self.iid_field: target,
                MERGED_PREFIX + self.item_id_list_field: merged,
                MERGED_PREFIX + self.item_list_length_field: merged_len,
                DOMAIN_PREFIX + self.item_id_list_field: dom_seq,
                DOMAIN_PREFIX + self.item_list_length_field: dom_len,
                DOMAIN_TARGET: dom_target,
            }
        )

    def _set_list_fields(self):
        ilist, ilen = self.item_id_list_field, self.item_list_length_field
        inter = FeatureSource.INTERACTION
        self.set_field_property(ilist, FeatureType.TOKEN_SEQ, inter, self.max_item_list_len)
        self.set_field_property(ilen, FeatureType.TOKEN, inter, 1)
        self.set_field_property(
            MERGED_PREFIX + ilist, FeatureType.TOKEN_SEQ, inter, self.max_merged_len
        )
        self.set_field_property(MERGED_PREFIX + ilen, FeatureType.TOKEN, inter, 1)
