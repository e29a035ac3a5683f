"""GRPO's reward functions: the user's Python callables, their rewards checked, and the
group-relative advantages TRL computes from them.

A reward function is named as `path/to/rewards.py:NAME` (or `package.module:NAME`), loaded
as `--callbacks` loads a class, and called with TRL's convention:
`f(prompts=[...], completions=[...], completion_ids=[...], **fields)`, where `fields` are the
prompt records' other fields, one list entry per completion. It returns one float per
completion, or `None` where it does not apply. Whatever goes wrong is one line naming the
function: it raises, returns the wrong number of values, or a value that is not a number.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

from pathlib import Path

import torch

from llt.errors import ConfigError, LltError


class RewardError(LltError):
    """A reward function failed or returned what GRPO cannot use; the message names it."""


@dataclass
class RewardFunction:
    name: str  # as the user named it: the metric is rewards/NAME
    func: Callable


def load_reward_functions(names: list[str]) -> list[RewardFunction]:
    """The callables `names` point at, each checked to be callable; none: a `ConfigError`."""
    from llt.train.user_callbacks import user_object

    if not names:
        raise ConfigError("--reward_funcs: give at least one reward function, as path/to/rewards.py:NAME")

    def hint(module) -> str:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        return f" (its functions: {', '.join(found)})" if found else ""

    out = []
    for name in names:
        if ":" not in name and Path(name).is_dir():  # a reward model's folder
            out.append(RewardFunction(Path(name).name, RewardModel(name)))
            continue
        func = user_object(name, "--reward_funcs", "function", hint)
        if not callable(func):
            raise ConfigError(f"--reward_funcs {name}: {name.rpartition(':')[2]} is a "
                              f"{type(func).__name__}, not a function")
        out.append(RewardFunction(name.rpartition(":")[2], func))
    return out


class RewardModel:
    """A reward model as a reward function: a folder `llt export` wrote from an `llt reward`
    run (or a run folder / checkpoint of one, or any HF sequence-classification model with one
    label). Each prompt + completion is scored alone at its last token, as TRL scores with a
    reward model: chat prompts rendered with the reward model's chat template, text prompts
    and completions concatenated."""

    def __init__(self, path: str):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = _model_folder(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        except (OSError, ValueError) as e:
            raise ConfigError(f"--reward_funcs {path}: not a reward model folder ({type(e).__name__}: {e})") from None
        if self.model.config.num_labels != 1:
            raise ConfigError(f"--reward_funcs {path}: a classifier with {self.model.config.num_labels} labels; a "
                              "reward model has one (llt reward)")

    @torch.no_grad()
    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        out = []
        for p, c in zip(prompts, completions):
            if isinstance(p, list):
                text = self.tokenizer.apply_chat_template(p + c, tokenize=False)
                ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            else:
                ids = self.tokenizer(p + c, return_tensors="pt")["input_ids"]
            out.append(float(self.model(input_ids=ids).logits[0, 0]))
        return out


def _model_folder(path: str) -> str:
    """The model in `path`: the folder itself, or a run folder's newest checkpoint."""
    p = Path(path)
    if (p / "config.json").is_file():
        return str(p)
    ckpts = sorted(p.glob("checkpoint-*"), key=lambda c: int(c.name.rpartition("-")[2]) if
                   c.name.rpartition("-")[2].isdigit() else -1)
    if ckpts and (ckpts[-1] / "config.json").is_file():
        return str(ckpts[-1])
    raise ConfigError(f"--reward_funcs {path}: a folder without a model (no config.json); export the reward "
                      "model with llt export, or name a function as path/to/rewards.py:NAME")


def score(funcs: list[RewardFunction], prompts: list, completions: list, completion_ids: list,
          fields: dict[str, list]) -> torch.Tensor:
    """[completions, functions] float32 rewards, NaN where a function returned None."""
    out = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float32)
    for j, rf in enumerate(funcs):
        try:
            got = rf.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **fields)
        except Exception as e:  # noqa: BLE001 - the user's code: name it, not a traceback
            raise RewardError(f"reward function {rf.name} raised {type(e).__name__}: {e}") from None
        if not isinstance(got, (list, tuple)) or len(got) != len(completions):
            n = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
            raise RewardError(f"reward function {rf.name} returned {n} values for {len(completions)} completions; "
                              "return a list with one float (or None) per completion")
        for i, value in enumerate(got):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise RewardError(f"reward function {rf.name} returned {value!r} for completion {i}; "
                                  "rewards are finite numbers, or None where the function does not apply")
            out[i, j] = float(value)
    return out


def advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, group: int, scale: str) -> tuple:
    """(advantages, rewards) as TRL's GRPOTrainer computes them (sum_then_normalize): the
    weighted sum of the functions' rewards (None counts as absent), minus the group's mean,
    divided by the group's (scale "group") or the batch's ("batch") std + 1e-4, or not
    ("none"). A completion every function left unscored gets advantage 0.

    Examples:
        >>> a, r = advantages(torch.tensor([[1.0], [0.0], [2.0], [2.0]]), torch.ones(1), 2, "none")
        >>> a.tolist(), r.tolist()
        ([0.5, -0.5, 0.0, 0.0], [1.0, 0.0, 2.0, 2.0])
    """
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = math.nan
    grouped = rewards.view(-1, group)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group)
    if scale == "batch":
        std = _nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = _nanstd(grouped, dim=1).repeat_interleave(group)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), rewards


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The unbiased std ignoring NaNs (TRL's `nanstd`)."""
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    count = torch.sum(~torch.isnan(x), dim=dim)
    return torch.sqrt(var * count / (count - 1))
