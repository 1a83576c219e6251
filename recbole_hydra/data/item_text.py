"""Item text for an item LLM (Hydra paper section 4.1.2): one sentence per item, made from the
configured fields of the dataset's ``.item`` file.

``item_texts`` flattens the fields (``item_text_fields``; ``~`` = every loaded item field but the
id) into one sentence behind a fixed prompt (``item_prompt``)::

    Compress the following sentence into embedding: movie title: Toy Story. release year: 1995.
    class: Animation Children's Comedy.

Token values are read back from RecBole's remapped ids, ``token_seq`` values are joined with
spaces (``_`` inside a token, as the Amazon converter writes category names, becomes a space),
floats are printed as RecBole loaded them (``normalize_all: True``, RecBole's default for
ml-100k, rescales float columns: keep years as tokens or set it False), empty values are left out.
Items without a ``.item`` row get the prompt alone. A literal ``[ITEM]`` in an item's text is
written ``ITEM``: the encoder appends that token itself, exactly once.
"""

import os

from recbole.utils import FeatureType

from recbole_hydra.errors import UsageError
from recbole_hydra.layers.item_llm import ITEM_TOKEN


def _feature_text(dataset, field, value):
    ftype = dataset.field2type[field]
    if ftype == FeatureType.TOKEN:
        token = str(dataset.field2id_token[field][int(value)]) if int(value) else ""
        return token
    if ftype == FeatureType.TOKEN_SEQ:
        tokens = dataset.field2id_token[field]
        return " ".join(str(tokens[int(v)]).replace("_", " ") for v in value if int(v))
    values = [value] if ftype == FeatureType.FLOAT else list(value)
    return " ".join(f"{float(v):g}" for v in values if v == v)  # NaN: missing


def item_texts(dataset, fields, prompt):
    """One string per internal item id (index 0, padding, is ``""``): ``prompt`` then
    ``"<field name>: <value>."`` for each of ``fields`` whose value is not empty."""
    name = getattr(dataset, "dataset_name", "the dataset")
    item_feat = getattr(dataset, "item_feat", None)
    iid = dataset.iid_field
    available = [f for f in (item_feat.columns if item_feat is not None else []) if f != iid]
    if not available:
        where = os.path.join(getattr(dataset, "dataset_path", "") or "", f"{name}.item")
        # the package's example (``properties/`` in a checkout is the same file)
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        example = os.path.join(package, "properties", "HydraLLM-ml-100k.yaml")
        raise UsageError(
            f"item_model: llm reads item text from {where}, but no item features were loaded: "
            f"list its columns in load_col, e.g. load_col: {{inter: [user_id, item_id, timestamp], "
            f"item: [item_id, movie_title, release_year, class]}} (see "
            f"{example}), and make sure that file exists"
        )
    if fields is None:
        fields = available
    fields = [fields] if isinstance(fields, str) else list(fields)
    missing = [f for f in fields if f not in available]
    if missing or not fields:
        raise UsageError(
            f"item_text_fields {missing or fields} not among the item fields loaded "
            f"from {name}.item "
            f"({', '.join(available)}): set item_text_fields to some of those, or add the columns "
            f"to load_col: {{item: [...]}}"
        )
    columns = {f: item_feat[f] for f in fields}
    texts = [""]
    for i in range(1, len(item_feat)):
        parts = []
        for f in fields:
            value = _feature_text(dataset, f, columns[f][i])
            if value:
                parts.append(f"{f.replace('_', ' ')}: {value}.")
        texts.append((prompt + " ".join(parts)).replace(ITEM_TOKEN, "ITEM"))
    return texts
