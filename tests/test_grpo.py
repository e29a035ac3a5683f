"""GRPO, the parts built so far: TRL's loss types on llt's padding-free per-token log-probs
equal TRL's GRPOTrainer (loss and every gradient, with and without KL, on-policy and with
generation-time log-probs), group advantages as TRL's, reward functions checked by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_preference import _grads

from llt.errors import LltError
from llt.train.grpo.config import GrpoArguments
from llt.train.grpo.losses import grpo_loss
from llt.train.grpo.rewards import RewardError, advantages, load_reward_functions, score

trl = pytest.importorskip("trl", reason="TRL is the reference for the equivalence tests (pip install trl)")

PROMPTS = [[5, 9, 12, 7], [8, 3], [5, 9, 12, 7], [8, 3]]  # two prompts, G = 2 each
COMPLETIONS = [[14, 22, 31, 2], [40, 41], [17, 2], [33, 34, 35, 36, 37]]


def _trl(model_dir, tok, args: GrpoArguments):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    cfg = GRPOConfig(output_dir="/tmp/trl-grpo", report_to=[], bf16=False, use_cpu=True, loss_type=args.loss_type,
                     beta=args.beta, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                     num_generations=args.num_generations, per_device_train_batch_size=len(PROMPTS),
                     max_completion_length=args.max_completion_length, temperature=args.temperature,
                     num_iterations=args.num_iterations)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=cfg,
                          processing_class=tok, train_dataset=Dataset.from_list([{"prompt": "x"}] * len(PROMPTS)))
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _trl_inputs(adv, old, ref):
    """TRL's batch: prompts left-padded, completions right-padded, per-token extras [B, C]."""
    width_p, width_c = max(map(len, PROMPTS)), max(map(len, COMPLETIONS))
    prompt_ids, prompt_mask = torch.zeros(len(PROMPTS), width_p, dtype=torch.long), torch.zeros(len(PROMPTS), width_p,
                                                                                                 dtype=torch.long)
    comp_ids, comp_mask = torch.zeros(len(PROMPTS), width_c, dtype=torch.long), torch.zeros(len(PROMPTS), width_c,
                                                                                             dtype=torch.long)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        prompt_ids[i, width_p - len(p):], prompt_mask[i, width_p - len(p):] = torch.tensor(p), 1
        comp_ids[i, :len(c)], comp_mask[i, :len(c)] = torch.tensor(c), 1
    out = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp_ids,
           "completion_mask": comp_mask, "advantages": adv, "num_items_in_batch": comp_mask.sum()}
    for key, flat in (("old_per_token_logps", old), ("ref_per_token_logps", ref)):
        if flat is not None:
            padded = torch.zeros(len(PROMPTS), width_c)
            for i, piece in enumerate(torch.split(flat, list(map(len, COMPLETIONS)))):
                padded[i, :len(piece)] = piece
            out[key] = padded
    return out


def _llt_logps(model, temperature: float):
    """Each completion token's log-prob through llt's chunked loss on one padding-free row."""
    from llt.data.collate import BatchExtras, PaddingFreeCollator
    from llt.model.loss import use_chunked_loss

    use_chunked_loss(model)
    feats = [{"input_ids": np.array(p + c), "labels": np.array([-100] * len(p) + c), "doc_starts": np.array([0])}
             for p, c in zip(PROMPTS, COMPLETIONS)]
    batch = PaddingFreeCollator(flat=True, doc_ids=True)(feats)
    extras = BatchExtras.pop(batch, model_takes_groups=False)
    out = model(**batch, llt_token_losses=True, llt_temperature=temperature)
    keep = batch["labels"][:, 1:] != -100
    return -out.token_losses, extras.docs[:, 1:][keep]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta, iterations", [(0.0, 1), (0.04, 1), (0.04, 2)])
def test_loss_and_gradients_equal_trl(tiny_tok, tiny_model_dir, loss_type, beta, iterations):
    from transformers import AutoModelForCausalLM

    args = GrpoArguments(loss_type=loss_type, beta=beta, num_iterations=iterations, num_generations=2,
                         max_completion_length=6, epsilon=0.2, epsilon_high=0.28, temperature=0.7)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.train()
    logps, doc = _llt_logps(model, args.temperature)
    assert doc.tolist() == [i for i, c in enumerate(COMPLETIONS) for _ in c]
    g = torch.Generator().manual_seed(0)
    adv = torch.tensor([1.2, -0.7, -1.1, 0.6])
    # μ = 2: log-probs at generation time differ from now, enough for some ratios to clip
    old = logps.detach() + 0.3 * torch.randn(logps.shape, generator=g) if iterations > 1 else None
    ref = logps.detach() + 0.5 * torch.randn(logps.shape, generator=g) if beta else None
    tokens = float(sum(map(len, COMPLETIONS)))
    ours, metrics = grpo_loss(args, logps, doc, len(COMPLETIONS), adv, old_logps=old, ref_logps=ref,
                              dapo_tokens=tokens)
    ours.backward()

    trainer = _trl(tiny_model_dir, tiny_tok, args)
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.train()
    theirs = trainer._compute_loss(trainer.model, _trl_inputs(adv, old, ref))
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < 1e-5, (ours.item(), theirs.item())
    assert abs(ours.item()) > 1e-3 or iterations == 1 and beta == 0  # on-policy, no KL: the loss is ~0
    mine, ref_grads = _grads(model), _grads(trainer.model)
    worst = max((mine[k] - ref_grads[k]).abs().max().item() for k in mine)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in mine.values()) > 1e-4
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key, value in metrics.items():
        assert abs(value - logged[key]) < 1e-5, (key, value, logged[key])
    if iterations > 1:
        assert metrics["clip_ratio/region_mean"] > 0  # the clipping took part


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(scale):
    """TRL's sum_then_normalize, including a None from one function and a completion no
    function scored (advantage 0)."""
    per_func = torch.tensor([[1.0, 0.5], [0.0, math.nan], [2.0, 1.0], [math.nan, math.nan], [0.5, 0.0], [3.0, 0.0]])
    weights = torch.tensor([1.0, 2.0])
    adv, rewards = advantages(per_func, weights, 3, scale)
    # by hand, as TRL: rewards 2, 0, 4 | nan, 0.5, 3
    want_r = torch.tensor([2.0, 0.0, 4.0, math.nan, 0.5, 3.0])
    assert torch.allclose(rewards, want_r, equal_nan=True)
    groups = [torch.tensor([2.0, 0.0, 4.0]), torch.tensor([0.5, 3.0])]
    means = torch.tensor([2.0] * 3 + [1.75] * 3)
    if scale == "group":
        std = torch.tensor([g.std().item() for g in groups for _ in range(3)])
    elif scale == "batch":
        std = torch.tensor([0.0, 2.0, 4.0, 0.5, 3.0]).std().expand(6)
    want = (want_r - means) / ((std + 1e-4) if scale != "none" else 1)
    want[3] = 0.0
    assert torch.allclose(adv, want, atol=1e-6), (adv, want)


def _rewards_file(tmp_path):
    f = tmp_path / "rewards.py"
    f.write_text("def exact(prompts, completions, answer, **kw):\n"
                 "    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]\n"
                 "def short(completions, **kw):\n    return [None if len(c) > 5 else 0.5 for c in completions]\n"
                 "def boom(completions, **kw):\n    raise KeyError('answer')\n"
                 "def too_few(completions, **kw):\n    return [1.0]\n"
                 "def words(completions, **kw):\n    return ['good' for c in completions]\n"
                 "def nan(completions, **kw):\n    return [float('nan') for c in completions]\n"
                 "NOT_A_FUNCTION = 3\n")
    (tmp_path / "broken.py").write_text("import no_such_module_for_llt\n")
    return f


def test_reward_functions_are_called_as_trl_calls_them(tmp_path):
    f = _rewards_file(tmp_path)
    funcs = load_reward_functions([f"{f}:exact", f"{f}:short"])
    got = score(funcs, ["q1", "q2"], ["4", "seven!"], [[1], [2]], {"answer": ["4", "7"]})
    assert torch.allclose(got, torch.tensor([[1.0, 0.5], [0.0, math.nan]]), equal_nan=True)


@pytest.mark.parametrize("name, problem", [
    ("boom", "reward function boom raised KeyError: 'answer'"),
    ("too_few", "reward function too_few returned 1 values for 2 completions"),
    ("words", "reward function words returned 'good' for completion 0"),
    ("nan", "reward function nan returned nan for completion 0"),
])
def test_a_bad_reward_function_is_named(tmp_path, name, problem):
    f = _rewards_file(tmp_path)
    with pytest.raises(RewardError, match=re_escape(problem)):
        score(load_reward_functions([f"{f}:{name}"]), ["a", "b"], ["x", "y"], [[1], [2]], {})


@pytest.mark.parametrize("spec, problem", [
    ("{d}/rewards.py:exactt", "{d}/rewards.py has no exactt (its functions: boom, exact, nan, short, too_few, words)"),
    ("{d}/rewards.py:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
    ("{d}/broken.py:f", "{d}/broken.py does not import: ModuleNotFoundError"),
    ("{d}/missing.py:f", "no such file"),
])
def test_a_reward_file_that_cannot_be_used_is_named(tmp_path, spec, problem):
    _rewards_file(tmp_path)
    with pytest.raises(LltError, match=re_escape("--reward_funcs " + spec.format(d=tmp_path)) + ".*"
                       + re_escape(problem.format(d=tmp_path))):
        load_reward_functions([spec.format(d=tmp_path)])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
