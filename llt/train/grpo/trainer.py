"""`GrpoTrainer`: `LltTrainer` whose micro-batches are the policy's own completions.

Each micro-step HF hands `training_step` a list of prompt numbers (`grpo.sampler`); on the
first micro-step of a generation batch the trainer generates G completions of each
(`grpo.generate`), scores them with the reward functions, turns the rewards into group
advantages (gathered over ranks, as TRL: a "batch" scale and the logged figures see every
rank's), computes the log-probs the loss compares against (the policy's at generation time
when `num_iterations` > 1, the reference's when β > 0: the LoRA adapter disabled or a
frozen copy) and keeps it all (`grpo.rollouts`). Every micro-step then trains one slice of
it with TRL's loss (`grpo.losses`) on llt's padding-free batch and chunked loss (each
completion token's log-prob at the sampling temperature, no full-vocabulary logits).

Loss scaling as TRL's: grpo/bnpo/dr_grpo divide each micro-batch's loss by the accumulation
steps, dapo divides the token sum by the generation batch's tokens over the ranks. Metrics
under TRL's names, averaged between logs; `completions.jsonl` in the run folder gets the
generation batch every `--log_completions_steps` steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from llt.data.collate import BatchExtras
from llt.data.dataset import IGNORE_INDEX
from llt.data.sampler import EpochBatchSampler
from llt.errors import ConfigError
from llt.train.grpo.config import GrpoArguments
from llt.train.grpo.generate import Generator, generation_seed
from llt.train.grpo.losses import grpo_loss
from llt.train.grpo.rewards import RewardFunction, advantages, score
from llt.train.grpo.rollouts import Rollouts
from llt.train.grpo.sampler import RepeatedBatches
from llt.train.resume import RunShape
from llt.train.trainer import LltTrainer

COMPLETIONS_LOG = "completions.jsonl"
ROLLOUTS_FILE = "grpo_rollouts_rank{rank}.pt"


class GrpoTrainer(LltTrainer):
    """`LltTrainer` plus `grpo` (the flags), `reward_funcs`, `generator` and `ref_model` (a
    frozen copy, for a full fine-tune with β > 0); `train_dataset` is a `grpo.prompts.PromptSet`."""

    def __init__(self, *args, grpo: GrpoArguments, reward_funcs: list[RewardFunction], generator: Generator,
                 ref_model=None, eos: set[int] = frozenset(), **kwargs):
        super().__init__(*args, **kwargs)
        self.grpo, self.reward_funcs, self.generator, self.ref_model = grpo, reward_funcs, generator, ref_model
        self.eos = set(eos)
        self.loss_is_scaled_for_ga = True  # each loss type scales for accumulation itself, as TRL's
        self._metrics = defaultdict(list)
        self._buffer: Rollouts | None = None
        self._micro = 0  # micro-steps trained from the current generation batch
        self.timing = {"generate_s": 0.0, "score_s": 0.0}  # seconds, since the start (bench/grpo.py reads them)
        weights = grpo.reward_weights or [1.0] * len(reward_funcs)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

    # ---- shape of a generation batch ----
    @property
    def period(self) -> int:
        """Micro-steps per generation batch: its slices, times the iterations over them."""
        return self.args.gradient_accumulation_steps * self.grpo.num_iterations

    @property
    def prompts_per_rank(self) -> int:
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps // self.grpo.num_generations

    def run_shape(self) -> RunShape:
        args = self.args
        return RunShape(n_samples=len(self.train_dataset), world_size=args.world_size,
                        batch_size=self.prompts_per_rank, gradient_accumulation_steps=self.period,
                        shuffle=self.shuffle_data, seed=args.data_seed if args.data_seed is not None else args.seed,
                        data=[self.train_dataset.identity()], plan=None)

    def planned_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        batches = len(self.train_dataset) // (self.prompts_per_rank * self.args.world_size)  # whole ones only
        return math.ceil(self.args.num_train_epochs * batches * self.grpo.num_iterations)

    def get_train_dataloader(self):
        shape = self.run_shape()
        need = self.prompts_per_rank * shape.world_size
        if len(self.train_dataset) < need:
            raise ConfigError(f"{len(self.train_dataset)} prompts, fewer than one generation batch takes ({need}: "
                              f"{self.prompts_per_rank} a rank x {shape.world_size} ranks); give more prompts or "
                              "lower --per_device_train_batch_size x --gradient_accumulation_steps")
        base = EpochBatchSampler(len(self.train_dataset), self.prompts_per_rank, world_size=shape.world_size,
                                 rank=self.args.process_index, shuffle=self.shuffle_data, seed=shape.seed)
        self.sampler = RepeatedBatches(base, self.period, {"num_generations": self.grpo.num_generations,
                                                           "num_iterations": self.grpo.num_iterations})
        if self._resume_position:
            self.sampler.resume_at(*self._resume_position)
        return self.loader(self.train_dataset, self.sampler, collate_fn=list)  # prompt numbers

    # ---- generation ----
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._buffer is None or self._micro % self.period == 0:
            self._buffer = self.rollout(model, list(inputs))
            self._micro = 0
        batch = self._buffer.micro_batch(self.data_collator, self._micro % self.args.gradient_accumulation_steps,
                                         self.args.per_device_train_batch_size)
        self._micro += 1
        if self._micro % self.args.gradient_accumulation_steps == 0:
            self.generator.policy_changed(model)  # the optimizer steps after this micro-batch
        return super().training_step(model, batch, None)

    def rollout(self, model, indices: list[int]) -> Rollouts:
        """Generate, score and prepare one generation batch of this rank's prompts `indices`."""
        g, prompts = self.grpo.num_generations, self.train_dataset
        rows = [i for i in indices for _ in range(g)]
        prompt_ids = [prompts.prompt_ids[i] for i in rows]
        batch_number = self.state.global_step // self.grpo.num_iterations
        start = time.perf_counter()
        completion_ids = self.generator.generate(model, prompt_ids, generation_seed(
            self.args.seed, batch_number, self.args.process_index))
        self.timing["generate_s"] += time.perf_counter() - start
        start = time.perf_counter()
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if prompts.conversational else texts
        per_func = score(self.reward_funcs, prompts.prompts(rows), completions, completion_ids,
                         prompts.fields(rows, self.grpo.prompt_field))
        gathered = self._gather(per_func)
        adv, rewards = advantages(gathered, self.reward_weights, g, self.grpo.scale_rewards)
        mine = slice(self.args.process_index * len(rows), (self.args.process_index + 1) * len(rows))
        truncated = [not c or c[-1] not in self.eos for c in completion_ids]
        mask = [not t for t in truncated] if self.grpo.mask_truncated_completions else [True] * len(rows)
        tokens = torch.tensor([float(sum(len(c) for c, m in zip(completion_ids, mask) if m))])
        dapo_tokens = float(self._gather(tokens).sum()) / self.args.world_size
        out = Rollouts(prompt_ids, completion_ids, adv[mine].clone(), mask, dapo_tokens)
        self._record_generation(gathered, rewards, completion_ids, truncated)
        if self.grpo.num_iterations > 1:
            out.old_logps = self._logps(model, out, reference=False)
        if self.grpo.beta != 0.0:
            out.ref_logps = self._logps(model, out, reference=True)
        self.timing["score_s"] += time.perf_counter() - start
        if self.grpo.log_completions_steps and self.state.global_step % self.grpo.log_completions_steps == 0:
            self._log_completions(prompts.prompts(rows), completions, per_func, rewards[mine], out.advantages)
        return out

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.args.world_size == 1:
            return t
        return self.accelerator.gather(t.to(self.args.device)).cpu()

    @torch.no_grad()
    def _logps(self, model, rollouts: Rollouts, reference: bool) -> list[torch.Tensor]:
        """Each completion's token log-probs under the policy as it is now, or the reference."""
        out, size = [], self.args.per_device_train_batch_size
        for k in range(-(-len(rollouts) // size)):
            batch = rollouts.micro_batch(self.data_collator, k, size)
            batch.pop("llt_grpo")
            extras = BatchExtras.pop(batch, model_takes_groups=False)
            batch = self._prepare_inputs(batch)
            with self._reference(model) if reference else contextlib.nullcontext() as ref:
                logps, doc = self.token_logps(ref if reference else model, batch, extras.docs)
            lengths = [len(c) for c in rollouts.completion_ids[k * size:(k + 1) * size]]
            out += [t.detach().float().cpu() for t in torch.split(logps, lengths)]
        return out

    @contextlib.contextmanager
    def _reference(self, model):
        if self.ref_model is not None:
            yield self.ref_model
            return
        with self.accelerator.unwrap_model(model).disable_adapter():
            yield model

    def token_logps(self, model, batch: dict, docs: torch.Tensor):
        """(log-prob of every completion token at the sampling temperature, its completion number)."""
        out = model(**batch, llt_token_losses=True, llt_temperature=self.grpo.temperature)
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        return -out.token_losses, docs.to(keep.device)[:, 1:][keep]

    # ---- the loss ----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extra = inputs.pop("llt_grpo")
        extras = BatchExtras.pop(inputs, model_takes_groups=False)
        if extras.counts is not None and self.throughput is not None:
            self.throughput.observe(extras.counts)
        logps, doc = self.token_logps(model, inputs, extras.docs)
        n = len(extra["advantages"])
        dev = logps.device
        loss, metrics = grpo_loss(self.grpo, logps, doc, n, extra["advantages"].to(dev), mask=extra["mask"].to(dev),
                                  old_logps=_get(extra, "old_logps", dev), ref_logps=_get(extra, "ref_logps", dev),
                                  dapo_tokens=float(extra["dapo_tokens"]))
        if self.grpo.loss_type != "dapo":
            loss = loss / self.args.gradient_accumulation_steps
        for key, value in metrics.items():
            self._metrics[key].append(value)
        return (loss, {"loss": loss}) if return_outputs else loss

    # ---- metrics and logs ----
    def _record_generation(self, per_func, rewards, completion_ids, truncated) -> None:
        m, g = self._metrics, self.grpo.num_generations
        for j, rf in enumerate(self.reward_funcs):
            col = per_func[:, j]
            m[f"rewards/{rf.name}/mean"].append(float(torch.nanmean(col)))
            m[f"rewards/{rf.name}/std"].append(float(_nanstd(col)))
        m["reward"].append(float(torch.nanmean(rewards)))
        m["reward_std"].append(float(_nanstd(rewards)))
        grouped = rewards.view(-1, g)
        m["frac_reward_zero_std"].append(float((_nanstd_rows(grouped) < 1e-8).float().mean()))
        lengths = self._gather(torch.tensor([float(len(c)) for c in completion_ids]))
        cut = self._gather(torch.tensor([float(t) for t in truncated])).bool()
        m["completions/mean_length"].append(float(lengths.mean()))
        m["completions/min_length"].append(float(lengths.min()))
        m["completions/max_length"].append(float(lengths.max()))
        m["completions/clipped_ratio"].append(float(cut.float().mean()))
        ended = lengths[~cut] if (~cut).any() else torch.zeros(1)
        m["completions/mean_terminated_length"].append(float(ended.mean()))
        m["completions/min_terminated_length"].append(float(ended.min()))
        m["completions/max_terminated_length"].append(float(ended.max()))

    def log(self, logs: dict, start_time=None) -> None:
        """HF's log; a training log gets the GRPO metrics averaged since the last one (TRL's names)."""
        if "loss" in logs and self._metrics:
            means = {k: sum(v) / len(v) for k, v in self._metrics.items() if v}
            logs = {**logs, **means, "time/generate_s": round(self.timing["generate_s"], 3)}
            self._metrics.clear()
        super().log(logs, start_time)

    def _log_completions(self, prompts, completions, per_func, rewards, adv) -> None:
        """The generation batch (this rank's) appended to completions.jsonl: readable while the run goes."""
        if not self.args.should_save:
            return
        path = Path(self.args.output_dir) / COMPLETIONS_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for i, (p, c) in enumerate(zip(prompts, completions)):
                row = {"step": self.state.global_step, "prompt": p, "completion": c,
                       "rewards": {rf.name: _num(per_func[i, j]) for j, rf in enumerate(self.reward_funcs)},
                       "reward": _num(rewards[i]), "advantage": round(float(adv[i]), 6)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # ---- checkpoints part-way through a generation batch ----
    def _write_rank_extras(self, folder: Path) -> None:
        """A checkpoint between two iterations over a generation batch (num_iterations > 1)
        keeps the batch: a resumed run trains the rest of it, as an uninterrupted one would."""
        if self._buffer is not None and self._micro % self.period:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"micro": self._micro, **self._buffer.state()},
                       folder / ROLLOUTS_FILE.format(rank=self.args.process_index))

    def plan_resume(self, path: str) -> str:
        from llt.runs.folder import DATA_STATE, TRAINER_STATE

        ckpt = super().plan_resume(path)
        saved = json.loads((Path(ckpt) / DATA_STATE).read_text())
        now = {"num_generations": self.grpo.num_generations, "num_iterations": self.grpo.num_iterations}
        if saved.get("grpo") != now:
            raise ConfigError(f"--load_ckpt_path {ckpt}: cannot resume exactly, changed since the checkpoint: "
                              f"--num_generations/--num_iterations ({saved.get('grpo')} -> {now})")
        micro = int(saved["step"]) % self.period
        if micro:
            state = torch.load(Path(ckpt) / ROLLOUTS_FILE.format(rank=self.args.process_index), weights_only=False)
            self._micro = state.pop("micro")
            self._buffer = Rollouts(**state)
        if self.args.should_save:
            _drop_later_completions(Path(self.args.output_dir) / COMPLETIONS_LOG, int(
                json.loads((Path(ckpt) / TRAINER_STATE).read_text())["global_step"]))
        return ckpt


def _drop_later_completions(path: Path, step: int) -> None:
    """A resumed run logs the steps after its checkpoint again: drop the interrupted run's lines for them."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line)["step"] < step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)


def _get(d: dict, key: str, device):
    return d[key].to(device) if key in d else None


def _num(x) -> float | None:
    x = float(x)
    return None if x != x else round(x, 6)


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    x = x[~torch.isnan(x)]
    return x.std() if len(x) > 1 else torch.zeros(())


def _nanstd_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([_nanstd(row) for row in x])
