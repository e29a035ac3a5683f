"""GRPO (`llt grpo`): TRL's loss types on llt's padding-free per-token log-probs equal TRL's
GRPOTrainer, alone and end to end through both trainers (loss and every gradient, with and
without KL, on-policy and with generation-time log-probs); group advantages as TRL's; reward
functions checked by name; prompts rendered as at inference; generation seeded; exact
resume; bad input in one line; the vLLM seam; LoRA with the adapter-disabled reference."""

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


# ---- the method end to end: llt's GrpoTrainer against TRL's GRPOTrainer ----

RECORDS = [{"prompt": "what is 2 plus 3?", "answer": "5"}, {"prompt": "Hello there, how are you?", "answer": "good"}]
REWARDS = ("def has_answer(prompts, completions, answer, **kw):\n"
           "    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]\n"
           "def brevity(completions, completion_ids, **kw):\n"
           "    return [None if len(i) > 6 else -len(c) / 10 for c, i in zip(completions, completion_ids)]\n")


class FixedCompletions:
    """A generator that returns given completions (the issue's "completions injected")."""

    def __init__(self, completions):
        self.completions, self.calls = completions, []

    def generate(self, model, prompt_ids, seed):
        self.calls.append((prompt_ids, seed))
        return [list(c) for c in self.completions]

    def policy_changed(self, model):
        pass


def _completions(tok) -> list[list[int]]:
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    texts = ["the answer is 5", "3", "good, thank you", "how are you doing today, friend"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [ids[0] + [eos], ids[1] + [eos], ids[2] + [eos], ids[3][:7]]  # the last one cut (no EOS)


def _prompt_files(tmp_path, records=RECORDS):
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    return prompts, rewards


def _llt_trainer(tmp_path, model_dir, extra=()):
    from llt.train.grpo import build_trainer

    prompts, rewards = _prompt_files(tmp_path)
    return build_trainer(["--model_path", str(model_dir), "--input_path", str(prompts), "--reward_funcs",
                          f"{rewards}:has_answer", f"{rewards}:brevity", "--reward_weights", "1.0", "0.5",
                          "--output_path", str(tmp_path / "out"), "--use_cpu", "--report_to", "none",
                          "--deepspeed_config_path", "none", "--disable_tqdm", "true", "--shuffle_data", "false",
                          *extra])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta, iterations", [(0.0, 1), (0.04, 1), (0.04, 2)])
def test_trainer_equals_trl_end_to_end(tmp_path, tiny_tok, tiny_model_dir, loss_type, beta, iterations):
    """The same prompts and injected completions through both trainers: rewards, advantages,
    generation-time and reference log-probs, micro-batch, loss and every gradient equal TRL's;
    with μ = 2 also the second pass over the batch after an optimizer step (ratios != 1)."""
    import types

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    completions = _completions(tiny_tok)
    args = ["--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "7",
            "--temperature", "0.7", "--loss_type", loss_type, "--beta", str(beta), "--num_iterations",
            str(iterations), "--epsilon_high", "0.28", "--scale_rewards", "batch" if beta else "group",
            "--mask_truncated_completions", "true" if loss_type == "bnpo" else "false"]
    ours = _llt_trainer(tmp_path, tiny_model_dir, args)
    ours.generator = FixedCompletions(completions)
    model = ours.model
    model.train()
    assert ours.train_dataset.prompt_ids == [tiny_tok(text=r["prompt"])["input_ids"] for r in RECORDS]

    _, rewards = _prompt_files(tmp_path)
    import importlib.util
    spec = importlib.util.spec_from_file_location("grpo_rewards_ref", rewards)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = GRPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                     loss_type=loss_type, beta=beta, num_iterations=iterations, epsilon_high=0.28,
                     num_generations=2, per_device_train_batch_size=4, max_completion_length=7, temperature=0.7,
                     scale_rewards="batch" if beta else "group", reward_weights=[1.0, 0.5],
                     mask_truncated_completions=loss_type == "bnpo", log_completions=False)
    theirs = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                         reward_funcs=[mod.has_answer, mod.brevity], args=cfg, processing_class=tiny_tok,
                         train_dataset=Dataset.from_list(RECORDS))
    theirs._generate_single_turn = types.MethodType(lambda self, ids, *a, **k: (completions, None), theirs)
    theirs.model.load_state_dict(model.state_dict())
    theirs.model.train()
    theirs.current_gradient_accumulation_steps = 1

    buffer = ours.rollout(model, [0, 1])
    generation = theirs._prepare_inputs([r for r in RECORDS for _ in range(2)])
    order = _trl_order(generation, completions)
    assert torch.allclose(buffer.advantages, generation["advantages"][torch.argsort(order)].float(), atol=1e-6)
    for step in range(iterations):
        batch = ours._prepare_inputs(buffer.micro_batch(ours.data_collator, 0, 4))
        mine = ours.compute_loss(model, batch)
        mine.backward()
        ref = theirs.compute_loss(theirs.model, theirs._buffered_inputs[0])  # TRL's buffer, reused for μ = 2
        ref.backward()
        assert abs(mine.item() - ref.item()) < 1e-5, (step, mine.item(), ref.item())
        a, b = _grads(model), _grads(theirs.model)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
        assert max(g.abs().max().item() for g in a.values()) > 1e-4
        with torch.no_grad():  # one plain SGD step on both
            for m in (model, theirs.model):
                for p in m.parameters():
                    p -= 0.5 * p.grad
                    p.grad = None
    if iterations > 1:
        assert ours._metrics["clip_ratio/region_mean"][-1] > 0 or ours._metrics["kl"][-1] > 0
    for key in ("reward", "reward_std", "rewards/has_answer/mean", "rewards/brevity/mean",
                "completions/mean_length", "completions/clipped_ratio", "frac_reward_zero_std"):
        assert abs(ours._metrics[key][0] - theirs._metrics["train"][key][0]) < 1e-5, key


def _trl_order(generation: dict, completions) -> torch.Tensor:
    """TRL shuffles its generation batch: which of our completions each of its rows holds."""
    width = generation["completion_ids"].shape[1]
    rows = generation["completion_ids"].tolist()
    return torch.tensor([next(i for i, c in enumerate(completions) if c + [r[-1]] * (width - len(c)) == r)
                         for r in rows])


def _grpo(tmp_path, model_dir, *extra, records=RECORDS, rewards_text=REWARDS, funcs=("has_answer", "brevity")):
    """`llt grpo` in-process on the tiny model; the exit code."""
    import json

    from llt.train.grpo import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(rewards_text)
    return main(["--model_path", str(model_dir), "--input_path", str(prompts), "--reward_funcs",
                 *[f"{rewards}:{f}" for f in funcs], "--output_path", str(tmp_path / "out"), "--save_name", "g",
                 "--use_cpu", "--report_to", "none", "--deepspeed_config_path", "none", "--disable_tqdm", "true",
                 "--num_generations", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                 "--max_completion_length", "8", "--logging_steps", "1", "--learning_rate", "1e-3",
                 "--lr_scheduler_type", "constant", *extra])


def _run(tmp_path):
    from pathlib import Path

    (run,) = [p for p in Path(tmp_path / "out").iterdir() if p.is_dir()]
    return run


def _history(run) -> dict[int, dict]:
    import json

    from llt.runs.folder import newest_checkpoint

    state = json.loads((newest_checkpoint(run) / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if "loss" in e}


MORE = [{"prompt": f"what is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]
# a reward the tiny model can learn: the share of its tokens among the first 100 ids (byte-level characters)
SHORT = "def short(completion_ids, **kw):\n    return [sum(t < 100 for t in c) / len(c) for c in completion_ids]\n"


@pytest.mark.parametrize("stop_at", [2, 3])
def test_a_resumed_run_draws_the_same_prompts_and_completions(tmp_path, tiny_model_dir, stop_at):
    """num_iterations 2: generation batches at steps 1 and 3. Stopped after step 2 (between
    batches: the resumed run generates the next one, seeded as the uninterrupted run) or
    step 3 (part-way through one: the checkpoint keeps it), the resumed run's steps, losses
    and completions equal a run never stopped."""
    import json

    flags = ("--num_iterations", "2", "--save_steps", "1", "--save_optimizer", "true",
             "--log_completions_steps", "1")
    straight = tmp_path / "straight"
    assert _grpo(straight, tiny_model_dir, *flags, "--max_steps", "4", records=MORE, rewards_text=SHORT,
                 funcs=("short",)) == 0
    stopped = tmp_path / "stopped"
    assert _grpo(stopped, tiny_model_dir, *flags, "--max_steps", str(stop_at), records=MORE, rewards_text=SHORT,
                 funcs=("short",)) == 0
    assert _grpo(stopped, tiny_model_dir, *flags, "--max_steps", "4", "--load_ckpt_path", "auto",
                 records=MORE, rewards_text=SHORT, funcs=("short",)) == 0
    a, b = _history(_run(straight)), _history(_run(stopped))
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6), step
        assert a[step].get("reward") == b[step].get("reward"), step
    lines = [[json.loads(x) for x in (_run(r) / "completions.jsonl").read_text().splitlines()]
             for r in (straight, stopped)]
    assert [x["step"] for x in lines[0]] == [0] * 4 + [2] * 4  # 2 prompts x G=2, per generation batch
    assert lines[0] == lines[1]
    assert a[4]["loss"] != a[2]["loss"]


def test_grpo_raises_the_reward(tmp_path, tiny_model_dir):
    """A reward the tiny model can learn (the share of character tokens): the mean reward of
    the last steps is above the first steps'."""
    text = SHORT
    assert _grpo(tmp_path, tiny_model_dir, "--max_steps", "24", "--num_generations", "4",
                 "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--log_completions_steps", "0",
                 "--save_final", "true", records=MORE, rewards_text=text, funcs=("short",)) == 0
    history = _history(_run(tmp_path))
    rewards = [history[s]["reward"] for s in sorted(history)]
    assert len(rewards) == 24
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > first + 0.1, rewards


def test_conversational_prompts_render_the_generation_prompt(tmp_path, tiny_tok, tiny_model_dir):
    """Chat prompts are rendered as at inference (the template's generation prompt) and the
    reward functions get the completions as assistant messages, with the record's fields."""
    records = [{"prompt": [{"role": "user", "content": "what is 2 plus 3?"}], "answer": "5", "level": 1},
               {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
                "answer": "hi", "level": 2}]
    text = ("def check(prompts, completions, answer, level, **kw):\n"
            "    assert all(c[0]['role'] == 'assistant' and isinstance(c[0]['content'], str) for c in completions)\n"
            "    assert all(isinstance(p, list) and p[-1]['role'] == 'user' for p in prompts)\n"
            "    assert set(level) <= {1, 2} and len(answer) == len(completions)\n"
            "    return [float(len(c[0]['content']) % 3) for c in completions]\n")
    assert _grpo(tmp_path, tiny_model_dir, "--max_steps", "2", records=records, rewards_text=text,
                 funcs=("check",)) == 0
    from llt.train.grpo.config import GrpoArguments
    from llt.train.grpo.prompts import load_prompts

    got = load_prompts(GrpoArguments(input_path=[str(tmp_path / "prompts.jsonl")]), tiny_tok)
    assert got.prompt_ids == [tiny_tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"] for r in records]
    assert got.conversational and got.fields([0, 1], "prompt") == {"answer": ["5", "hi"], "level": [1, 2]}


@pytest.mark.parametrize("case, problem", [
    ("group", "--num_generations 3 does not divide --per_device_train_batch_size 2 x "
              "--gradient_accumulation_steps 2 = 4 completions per rank and step"),
    ("long", "prompts.jsonl: line 2: the prompt is {n} tokens, over --max_prompt_length 10"),
    ("field", "prompts.jsonl: line 2: no field 'prompt' (fields: question, answer); set --prompt_field"),
    ("type", "prompts.jsonl: line 1: field 'prompt' is int; a prompt is a string or a list of chat messages"),
    ("import", "--reward_funcs {d}/broken.py:f: {d}/broken.py does not import: ModuleNotFoundError"),
    ("raises", "llt grpo: error: reward function boom raised KeyError: 'answer'"),
    ("count", "reward function too_few returned 1 values for 4 completions"),
])
def test_bad_input_is_one_line_and_writes_no_checkpoint(tmp_path, tiny_tok, tiny_model_dir, capsys, case, problem):
    records, funcs, extra = list(RECORDS), ["has_answer"], ["--max_steps", "1", "--save_steps", "1"]
    text = REWARDS + "def boom(completions, **kw):\n    raise KeyError('answer')\n" \
                     "def too_few(completions, **kw):\n    return [1.0]\n"
    if case == "group":
        extra += ["--num_generations", "3"]
    elif case == "long":
        extra += ["--max_prompt_length", "10"]
        problem = problem.replace("{n}", str(len(tiny_tok(text=RECORDS[1]["prompt"])["input_ids"])))
    elif case == "field":
        records[1] = {"question": "hi", "answer": "x"}
    elif case == "type":
        records[0] = {"prompt": 7}
    elif case == "import":
        (tmp_path / "broken.py").write_text("import no_such_module_for_llt\n")
    elif case in ("raises", "count"):
        funcs = ["boom" if case == "raises" else "too_few"]
    if case == "import":
        from llt.train.grpo import main

        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "x"}\n')
        rc = main(["--model_path", str(tiny_model_dir), "--input_path", str(prompts), "--reward_funcs",
                   f"{tmp_path}/broken.py:f", "--use_cpu", "--output_path", str(tmp_path / "out")])
    else:
        rc = _grpo(tmp_path, tiny_model_dir, *extra, records=records, rewards_text=text, funcs=funcs)
    err = capsys.readouterr().err
    assert rc == 2
    assert problem.format(d=tmp_path) in err, err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").rglob("checkpoint-*"))


def test_generation_is_seeded_stops_at_eos_and_restores_the_model(tiny_tok, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llt.model.attention import register
    from llt.train.grpo.generate import TransformersGenerator, eos_ids, generation_seed

    register()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="llt_sdpa_varlen")
    model.train()
    eos = eos_ids(tiny_tok, model)
    gen = TransformersGenerator(GrpoArguments(max_completion_length=12, num_generations=2), eos, tiny_tok.pad_token_id)
    prompts = [tiny_tok(text=r["prompt"])["input_ids"] for r in RECORDS for _ in range(2)]  # two lengths: padding
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = gen.generate(model, prompts, generation_seed(1, 0, 0))
    assert torch.rand(1) == before  # the global stream did not move
    assert a == gen.generate(model, prompts, generation_seed(1, 0, 0))
    assert a != gen.generate(model, prompts, generation_seed(1, 1, 0))
    for c in a:
        assert 1 <= len(c) <= 12 and all(t not in eos for t in c[:-1])
        assert len(c) == 12 or c[-1] in eos
    assert model.training and model.config._attn_implementation == "llt_sdpa_varlen"
    # each prompt alone, unpadded, samples the same tokens as in the padded batch (greedy: no RNG)
    greedy = TransformersGenerator(GrpoArguments(max_completion_length=6, temperature=1.0, top_k=1), eos,
                                   tiny_tok.pad_token_id)
    batch = greedy.generate(model, prompts, 0)
    assert [greedy.generate(model, [p], 0)[0] for p in prompts] == batch


class FakeVllmClient:
    """Stands in for TRL's VLLMClient: records what llt sends (the vllm-serve protocol)."""

    def __init__(self, completions):
        self.completions, self.requests, self.pushed, self.resets = completions, [], {}, 0

    def generate(self, prompts, n, **kw):
        self.requests.append((prompts, n, kw))
        return {"completion_ids": [self.completions[k % len(self.completions)] for k in range(len(prompts) * n)]}

    def update_named_param(self, name, weights):
        self.pushed[name] = weights.clone()

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_server_seam_sends_prompts_and_pushes_merged_weights(tmp_path, tiny_tok, tiny_model_dir):
    """With --use_vllm the completions come from the server (unique prompts as token ids, n = G)
    and after each optimizer step the policy's weights, LoRA merged, go to it under the base
    model's names. (A real `trl vllm-serve` needs a GPU: not verified here.)"""
    from transformers import AutoModelForCausalLM

    from llt.train.grpo.generate import VllmServerGenerator

    trainer = _llt_trainer(tmp_path, tiny_model_dir, [
        "--use_lora", "true", "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_steps", "2",
        "--max_completion_length", "8", "--learning_rate", "1e-2", "--log_completions_steps", "0"])
    client = FakeVllmClient(_completions(tiny_tok))
    trainer.generator = VllmServerGenerator(trainer.grpo, client=client, accelerator=trainer.accelerator,
                                            eos=trainer.eos)
    trainer.train()
    assert len(client.requests) == 2 and all(n == 2 for _, n, _ in client.requests)
    assert sorted(map(tuple, client.requests[0][0])) == sorted(map(tuple, trainer.train_dataset.prompt_ids))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    assert set(client.pushed) == {n for n, _ in AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir)).named_parameters()}
    assert client.resets == 1  # pushed once: before the second generation (the first saw the start weights)
    q = "model.layers.0.self_attn.q_proj.weight"
    peft = trainer.accelerator.unwrap_model(trainer.model)
    assert not torch.equal(client.pushed[q], base[q])  # the adapter, merged in
    back = peft.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight  # and taken out again
    assert torch.allclose(back, base[q], atol=1e-6) and not torch.allclose(client.pushed[q], base[q], atol=1e-4)


def test_an_exported_reward_model_is_a_reward_function(tmp_path, tiny_tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(vocab_size=len(tiny_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tiny_tok.pad_token_id)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(str(tmp_path / "rm"))
    tiny_tok.save_pretrained(str(tmp_path / "rm"))
    (func,) = load_reward_functions([str(tmp_path / "rm")])
    got = score([func], ["what is 2 plus 3?", "hello"], [" 5", " hi there"], [[1], [2]], {})
    with torch.no_grad():
        want = [rm(input_ids=tiny_tok(p + c, return_tensors="pt")["input_ids"]).logits[0, 0].item()
                for p, c in (("what is 2 plus 3?", " 5"), ("hello", " hi there"))]
    assert func.name == "rm" and got[:, 0].tolist() == pytest.approx(want, abs=1e-6)
    assert got[0, 0] != got[1, 0]


def test_lora_grpo_with_kl_to_the_adapter_disabled_trains_and_exports(tmp_path, tiny_model_dir):
    """β > 0 under LoRA: the reference is the model with its adapter disabled, so the KL starts
    at 0 and grows as the adapter learns; the run exports to a plain HF model."""
    from transformers import AutoModelForCausalLM

    from llt.runs.export import export

    assert _grpo(tmp_path, tiny_model_dir, "--use_lora", "true", "--beta", "0.1", "--max_steps", "4",
                 "--learning_rate", "2e-2", "--num_iterations", "2", "--save_final", "true", records=MORE,
                 rewards_text=SHORT, funcs=("short",)) == 0
    history = _history(_run(tmp_path))
    assert history[1]["kl"] == pytest.approx(0.0, abs=1e-7)  # the adapter starts as a no-op (B = 0)
    assert history[4]["kl"] > 1e-6
    export(str(_run(tmp_path)), tmp_path / "merged")
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).config.vocab_size > 0


def test_llt_plot_draws_the_reward(tmp_path, tiny_model_dir):
    from llt.runs.history import read_history
    from llt.runs.plot import plot_runs, series

    assert _grpo(tmp_path, tiny_model_dir, "--max_steps", "3", "--log_completions_steps", "0", records=MORE,
                 rewards_text=SHORT, funcs=("short",), ) == 0
    run = _run(tmp_path)
    steps, rewards, _, _ = series(read_history(run), "step", "reward")
    assert steps == [1, 2, 3] and rewards == [_history(run)[s]["reward"] for s in steps]
    assert plot_runs([str(run)], tmp_path / "reward.png", "step", metric="reward").stat().st_size > 1000


@pytest.mark.slow
def test_two_process_grpo_and_zero3(tmp_path, tiny_model_dir):
    """Two DDP processes (each generating whole groups of its own prompts, rewards gathered
    for the advantages and the logs) and DeepSpeed ZeRO-3 (generation with the partitioned
    weights gathered): both train, with rewards and completion lengths logged every step."""
    import json

    from tests.procs import RECIPES, launcher, run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in MORE))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(SHORT)
    flags = ["--model_path", str(tiny_model_dir), "--input_path", str(prompts), "--reward_funcs",
             f"{rewards}:short", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
             "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "6",
             "--max_steps", "3", "--learning_rate", "1e-3", "--log_completions_steps", "1"]
    launches = {
        "ddp_lora_kl": [*launcher("accelerate", RECIPES["grpo"], 2), "--deepspeed_config_path", "none",
                        "--use_lora", "true", "--beta", "0.05"],
        "zero3": [*launcher("torchrun", RECIPES["grpo"]), "--deepspeed_config_path", "configs/deepspeed/zero3.json"],
    }
    for name, cmd in launches.items():
        run([*cmd, *flags, "--output_path", str(tmp_path / name)])
        folder = next((tmp_path / name).glob("*"))
        steps = [h for h in json.loads((folder / "loss_history.json").read_text()) if "reward" in h]
        assert len(steps) == 3 and all(math.isfinite(s["loss"]) for s in steps), (name, steps)
        lines = (folder / "completions.jsonl").read_text().splitlines()
        assert len(lines) == 3 * 2  # rank 0's generation batch (1 prompt x G = 2) at each of the 3 steps


def test_prompts_come_from_every_source_llt_encode_reads(tmp_path, tiny_tok):
    """JSONL, Parquet, a HF datasets folder, --dataset and a data_loader(): the same prompts and
    fields, in order, with every column kept for the reward functions."""
    import datasets

    from llt.train.grpo.config import GrpoArguments
    from llt.train.grpo.prompts import load_prompts

    records = [{"prompt": f"what is {i} plus 1?", "answer": str(i + 1), "level": i % 3} for i in range(5)]
    ds = datasets.Dataset.from_list(records)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_json(str(tmp_path / "p.jsonl"))
    loader = tmp_path / "loader.py"
    loader.write_text(f"import json\ndef data_loader():\n    yield from {records!r}\n")
    sources = {"jsonl": dict(input_path=[str(tmp_path / "p.jsonl")]),
               "parquet": dict(input_path=[str(tmp_path / "p.parquet")]),
               "hf": dict(input_path=[str(tmp_path / "hf")]),
               "dataset": dict(dataset="parquet", data_files=[str(tmp_path / "p.parquet")]),
               "loader": dict(data_loader_path=str(loader))}
    want = [tiny_tok(text=r["prompt"])["input_ids"] for r in records]
    for name, kw in sources.items():
        got = load_prompts(GrpoArguments(**kw), tiny_tok)
        assert got.prompt_ids == want, name
        assert got.fields([0, 4], "prompt") == {"answer": ["1", "5"], "level": [0, 1]}, name
        assert not got.conversational


def test_an_epoch_drops_the_prompts_that_do_not_fill_a_generation_batch(tmp_path, tiny_model_dir, capsys):
    """5 prompts, 2 a generation batch: 2 steps an epoch (the fifth prompt waits for the next
    epoch's order, as TRL drops it); fewer prompts than one batch is refused in one line."""
    import json

    assert _grpo(tmp_path / "a", tiny_model_dir, "--max_epochs", "2", "--log_completions_steps", "1",
                 records=MORE[:5], rewards_text=SHORT, funcs=("short",)) == 0
    run = _run(tmp_path / "a")
    assert sorted(_history(run)) == [1, 2, 3, 4]
    lines = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 2 * 2  # 4 generation batches of 2 prompts x G
    assert _grpo(tmp_path / "b", tiny_model_dir, "--max_steps", "1", records=MORE[:1], rewards_text=SHORT,
                 funcs=("short",)) == 2
    assert "1 prompts, fewer than one generation batch takes (2: 2 a rank x 1 ranks)" in capsys.readouterr().err
