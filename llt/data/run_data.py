"""The run's data from `--data_path`, `--eval_split` and `--eval_data_path`: the training
dataset, each epoch's samples (the mix), the held-out set, and what the run folder
records about them (`llt_data.json`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llt.data.corpora import CorpusSpec, EpochPlan, parse_corpora
from llt.data.dataset import ShardDataset
from llt.data.heldout import EvalView, build_eval_set, held_tokens, split_eval
from llt.errors import DataError
from llt.shards.manifest import MANIFEST


@dataclass
class RunData:
    dataset: ShardDataset
    plan: EpochPlan
    eval_set: EvalView | None
    specs: list[CorpusSpec]

    @property
    def names(self) -> list[str]:
        return self.dataset.names

    @property
    def n_groups(self) -> int:
        """Corpora the per-corpus loss counts: training's, or the eval set's when it has more."""
        return max(self.dataset.n_corpora, len(self.eval_set.names) if self.eval_set else 1)

    def manifest(self) -> dict:
        """`llt_data.json`: every corpus with its shards (name, samples, tokens, checksum),
        the mix per epoch and the held-out set."""
        corpora = []
        for c, spec in enumerate(self.specs):
            shards = [{"path": str(p), "samples": h["n_samples"], "tokens": h["n_tokens"]}
                      for p, h, k in zip(self.dataset.paths, self.dataset.headers, self.dataset.shard_corpus)
                      if k == c]
            manifests = sorted({str(Path(s["path"]).parent / MANIFEST) for s in shards
                                if (Path(s["path"]).parent / MANIFEST).is_file()})
            corpora.append({"name": spec.name, "path": str(Path(spec.path).resolve()), "weight": spec.weight,
                            "encode_manifests": manifests, "shards": shards})
        evals = None
        if self.eval_set is not None:
            evals = {"samples": len(self.eval_set), "groups": self.eval_set.names}
        return {"tokenizer_fingerprint": self.dataset.fingerprint, "corpora": corpora,
                "mix_per_epoch": self.plan.describe(), "samples_per_epoch": self.plan.size, "eval": evals}


def corpus_specs(data_args) -> tuple[list[CorpusSpec], list[CorpusSpec]]:
    """The `--data_path` and `--eval_data_path` entries, checked."""
    specs = parse_corpora(data_args.data_path)
    eval_specs = parse_corpora(data_args.eval_data_path, "--eval_data_path") if data_args.eval_data_path else []
    if any(s.weight is not None for s in eval_specs):
        raise DataError("--eval_data_path: weights do not apply to held-out data (every sample is "
                        "evaluated); drop the :weight")
    return specs, eval_specs


def build_data(data_args, seed: int) -> RunData:
    """The datasets, the epoch plan and the held-out set (shards are verified before,
    by the caller: see `llt.train.checks.verify_on_local_main`)."""
    specs, eval_specs = corpus_specs(data_args)
    dataset = ShardDataset([s.path for s in specs], names=[s.name for s in specs])
    if data_args.eval_split < 0:
        raise DataError(f"--eval_split {data_args.eval_split}: must be 0 or more")
    pools = split_eval(dataset, data_args.eval_split)
    # Training tokens per corpus: the headers' counts less the held-out samples' lengths.
    tokens = [dataset.corpus_tokens(c) - held_tokens(dataset, pool) for c, pool in enumerate(pools)]
    weights = [s.weight for s in specs] if specs[0].weight is not None else None
    plan = EpochPlan(pools, tokens, weights, seed=seed, shuffle=data_args.shuffle_data, names=dataset.names)
    eval_data = None
    if eval_specs:
        eval_data = ShardDataset([s.path for s in eval_specs], names=[s.name for s in eval_specs])
        if eval_data.fingerprint != dataset.fingerprint:
            raise DataError(f"--eval_data_path {eval_specs[0].path}: encoded with a different tokenizer "
                            "than --data_path")
    return RunData(dataset, plan, build_eval_set(dataset, pools, eval_data), specs)
