"""Evaluation per domain for HydraMD (Hydra paper Table 5): RecBole's metrics on each domain's
rows, their mean, and the trainer that reports them."""

import logging
from collections import OrderedDict

import numpy as np
import torch
from recbole.evaluator.collector import DataStruct

from recbole_hydra.trainer.generative import GenerativeTrainer

ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.items", "rec.score")


def domain_metrics(evaluate, struct, row_domains, domain_ids, domain_names, decimals=4):
    """RecBole's metrics per domain: ``evaluate`` (an ``Evaluator.evaluate``) on the rows of each
    domain of ``struct`` (RecBole's collected data; one row per evaluation target, in the order of
    ``row_domains``). Returns the mean over the domains under RecBole's plain keys (``recall@10``)
    followed by each domain's under ``recall@10 [name]``. Domains without rows are left out of
    both (the mean is over the domains that have rows)."""
    per_domain = OrderedDict()
    for d, name in zip(domain_ids, domain_names):
        mask = row_domains == d
        if not bool(mask.any()):
            continue
        sub = DataStruct()
        for key, value in struct._data_dict.items():
            per_row = (
                key in ROW_KEYS
                and isinstance(value, torch.Tensor)
                and len(value) == len(row_domains)
            )
            sub.set(key, value[mask] if per_row else value)
        per_domain[name] = evaluate(sub)
    result = OrderedDict()
    if not per_domain:
        return result
    for metric in next(iter(per_domain.values())):
        result[metric] = round(float(np.mean([r[metric] for r in per_domain.values()])), decimals)
    for name, values in per_domain.items():
        for metric, value in values.items():
            result[f"{metric} [{name}]"] = value
    return result


def domain_table(result, names=None):
    """Markdown table of a ``domain_metrics`` result: one row per domain, then their mean."""
    metrics = [k for k in result if " [" not in k]
    if names is None:
        names = []
        for key in result:
            if " [" in key:
                name = key.split(" [", 1)[1][:-1]
                if name not in names:
                    names.append(name)
    lines = ["| domain | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name in names:
        if f"{metrics[0]} [{name}]" in result:
            lines.append(
                f"| {name} | "
                + " | ".join(f"{result[f'{m} [{name}]']:.4f}" for m in metrics)
                + " |"
            )
    lines.append("| mean | " + " | ".join(f"{result[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)


class MultiDomainTrainer(GenerativeTrainer):
    """RecBole's Trainer (with the warm-up/cosine schedule) whose ``evaluate`` reports RecBole's
    metrics per domain and their mean (``domain_metrics``): the model ranks each target inside its
    own domain, RecBole's collector records each row's top-k, and RecBole's evaluator runs on each
    domain's rows. ``valid_metric`` (e.g. NDCG@10) is therefore the mean over the domains, each
    domain weighted equally; the table is logged after each evaluation."""

    def _full_sort_batch_eval(self, batched_data):
        out = super()._full_sort_batch_eval(batched_data)
        self._row_domains.append(out[0][self.model.DOMAIN].cpu())
        return out

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        self._row_domains = []
        evaluator, original = self.evaluator, self.evaluator.evaluate

        def per_domain(struct):
            rows = (
                torch.cat(self._row_domains)
                if self._row_domains
                else torch.zeros(0, dtype=torch.long)
            )
            return domain_metrics(
                original,
                struct,
                rows,
                self.model.domain_ids,
                self.model.domain_names,
                self.config["metric_decimal_place"] or 4,
            )

        evaluator.evaluate = per_domain
        try:
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            del evaluator.evaluate  # back to the class's method
        if result:
            logging.getLogger().info(
                "per-domain results:\n" + domain_table(result, self.model.domain_names)
            )
        return result
