"""`--precompute_ref_logps`: the reference's log-prob of every completion, computed once.

Before the first step, each rank runs the reference over its share of the training samples
(and of the held-out pairs) in order, with no gradient; the ranks' results are gathered, so
every rank holds them all, and the main process saves them in the run folder
(`ref_logps.npz`) with what they depend on (the model and the data). A resumed run loads
the file (from its own folder or beside the checkpoint it resumes from) instead of
computing it again. During
training a batch looks its pairs up by sample id (`RefLogps.lookup`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from llt.data.sampler import EpochBatchSampler

FILE = "ref_logps.npz"


class RefLogps:
    """One split's reference log-probs: for sample `ids[k]`, its values
    `values[offsets[k]:offsets[k + 1]]`: one per document (chosen, rejected, chosen, ...;
    KTO: its examples', then its mismatched documents')."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, values: np.ndarray):
        self.ids, self.offsets, self.values = ids, offsets, values

    @classmethod
    def from_parts(cls, parts: list[tuple[int, np.ndarray]]) -> "RefLogps":
        parts = sorted({i: v for i, v in parts}.items())
        ids = np.array([i for i, _ in parts], np.int64)
        counts = np.array([len(v) for _, v in parts], np.int64)
        values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0, np.float32)
        return cls(ids, np.concatenate([[0], np.cumsum(counts)]), values.astype(np.float32))

    def lookup(self, sample_ids: torch.Tensor, device) -> torch.Tensor:
        """The values of the batch's samples, in batch order (one per document)."""
        k = np.searchsorted(self.ids, sample_ids[:, 0].cpu().numpy())
        out = np.concatenate([self.values[self.offsets[j]:self.offsets[j + 1]] for j in k])
        return torch.from_numpy(out).to(device)


def identity(model_path: str, trainer) -> str:
    """What the cached values depend on: the model, the training data, and the eval set."""
    from llt.train.resume import data_identity

    eval_set = trainer.eval_dataset
    key = {"model": str(Path(model_path).resolve()), "data": data_identity(trainer.train_dataset),
           "eval": len(eval_set) if eval_set is not None else 0, "loss": "reference"}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _compute(trainer, model, dataset) -> RefLogps:
    args = trainer.args
    sampler = EpochBatchSampler(len(dataset), args.per_device_eval_batch_size, world_size=args.world_size,
                                rank=args.process_index, shuffle=False)
    parts = []
    with torch.no_grad():
        for batch in trainer.loader(dataset, sampler):
            with trainer.compute_loss_context_manager(), trainer._adapter_disabled(model):
                parts += trainer.reference_parts(model, batch)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, parts)
        parts = [p for rank in gathered for p in rank]
    return RefLogps.from_parts(parts)


def precompute(trainer, model, model_path: str, can_compute: bool = True) -> dict[str, RefLogps]:
    """The reference log-probs of the train and eval pairs: loaded from the run folder when
    they were computed for this model and data, else computed and saved (`can_compute`:
    the model still is the reference; a resumed full fine-tune is not)."""
    path = Path(trainer.args.output_dir) / FILE
    key = identity(model_path, trainer)
    # A resumed run writes a new run folder: the values are also looked for beside the
    # checkpoint it resumes from, and copied into the new folder.
    resumed = trainer.args.resume_from_checkpoint
    for found in [path] + ([Path(resumed).parent / FILE] if resumed else []):
        if found.is_file():
            saved = np.load(found)
            if str(saved["identity"]) == key:
                if found != path and trainer.args.should_save:
                    shutil.copyfile(found, path)
                return {s: RefLogps(saved[f"{s}_ids"], saved[f"{s}_offsets"], saved[f"{s}_values"])
                        for s in ("train", "eval") if f"{s}_ids" in saved}
    if not can_compute:
        from llt.errors import ConfigError

        raise ConfigError(f"--precompute_ref_logps: neither {path.parent} nor the checkpoint's run folder holds "
                          f"{FILE} for this model and data, and a resumed full fine-tune can no longer compute "
                          "them (its weights have moved away from the reference)")
    was_training = model.training
    model.eval()
    out = {"train": _compute(trainer, model, trainer.train_dataset)}
    if trainer.eval_dataset is not None:
        out["eval"] = _compute(trainer, model, trainer.eval_dataset)
    if was_training:
        model.train()
    if trainer.args.should_save:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{k}": getattr(r, k) for s, r in out.items() for k in ("ids", "offsets", "values")}
        tmp = path.with_suffix(".part.npz")
        np.savez(tmp, identity=np.array(key), **arrays)
        os.replace(tmp, path)
    return out
