"""GRPO as a training method: prompts read directly (`grpo.prompts`), the user's reward
functions (`grpo.rewards`), completions from the policy itself (`grpo.generate`) and
`GrpoTrainer`, with the reference its flags imply: none at β = 0 (TRL's default), the
model with its LoRA adapter disabled, or a frozen copy for a full fine-tune.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from llt.errors import ConfigError
from llt.train.grpo.config import GrpoArguments
from llt.train.methods import RunArgs, TrainingMethod, install_token_logps, require_token_logps, zero_stage


@dataclass
class PromptData:
    """What the shared build reads of a run's data, for a prompt set."""

    dataset: object  # grpo.prompts.PromptSet
    plan = None
    eval_set = None
    n_groups = 1

    @property
    def names(self) -> list[str]:
        return ["prompts"]

    def manifest(self) -> dict:
        return self.dataset.manifest()


class Grpo(TrainingMethod):
    command = "llt grpo"
    arguments = (GrpoArguments,)
    reads_corpora = False

    def __init__(self):
        self.grpo: GrpoArguments | None = None
        self.reward_funcs = []

    def check_flags(self, run: RunArgs) -> None:
        """Everything that can be refused before the model loads: the prompt source, the batch
        shape, the reward functions (imported now: a file that does not import stops the run here)."""
        from llt.train.grpo.rewards import load_reward_functions

        self.grpo, args = run.extra[0], run.train
        require_token_logps(run, self.command)
        g = self.grpo
        if run.data.data_path:
            raise ConfigError("--data_path: llt grpo reads prompt records, not encoded corpora; give them with "
                              "--input_path FILE.jsonl (or --dataset, --data_loader_path)")
        if not (g.input_path or g.dataset or g.data_loader_path):
            raise ConfigError("give the prompts with --input_path FILE..., --dataset NAME or --data_loader_path FILE.py")
        if run.data.eval_split or run.data.eval_data_path:
            raise ConfigError("--eval_split/--eval_data_path: llt grpo has no held-out evaluation; follow the "
                              "reward in the logs and the samples in completions.jsonl")
        if run.data.padding != "free":
            raise ConfigError(f"--padding {run.data.padding}: llt grpo trains padding-free batches; drop the flag")
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        if per_step % g.num_generations:
            raise ConfigError(
                f"--num_generations {g.num_generations} does not divide --per_device_train_batch_size "
                f"{args.per_device_train_batch_size} x --gradient_accumulation_steps "
                f"{args.gradient_accumulation_steps} = {per_step} completions per rank and step; each rank "
                f"generates whole groups: make that a multiple of {g.num_generations}")
        if g.beta and not run.lora.use_lora and zero_stage(args) == 3:
            raise ConfigError("llt grpo --beta > 0 under ZeRO-3 without LoRA: a frozen reference copy of a "
                              "partitioned model is not supported; use --use_lora (the reference is the adapter "
                              "disabled), ZeRO-2, or --beta 0")
        if g.use_vllm and zero_stage(args) == 3:
            raise ConfigError("--use_vllm under ZeRO-3 is not supported by llt yet (the pushed weights are "
                              "partitioned); use ZeRO-2 or LoRA without DeepSpeed")
        self.reward_funcs = load_reward_functions(g.reward_funcs)

    def data_paths(self, run: RunArgs) -> list[str]:
        return list(run.extra[0].input_path)

    def load_data(self, run: RunArgs, tokenizer):
        from llt.train.grpo.prompts import load_prompts

        return PromptData(load_prompts(run.extra[0], tokenizer))

    def check_fits(self, data, tokenizer, model, new_ids) -> None:
        limit = getattr(model.config, "max_position_embeddings", None)
        longest = max(map(len, data.dataset.prompt_ids))
        if limit and longest + self.grpo.max_completion_length > limit:
            i = max(range(len(data.dataset)), key=lambda k: len(data.dataset.prompt_ids[k]))
            raise ConfigError(f"{data.dataset.where[i]}: the prompt ({longest} tokens) plus --max_completion_length "
                              f"{self.grpo.max_completion_length} exceeds the model's {limit} positions; lower "
                              "--max_completion_length or --max_prompt_length")

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        install_token_logps(model, run, self.command)
        return False

    def collator_options(self) -> dict:
        return {"pairs": True}  # each position's completion number

    def trainer(self, run: RunArgs, model, common: dict):
        from llt.train.grpo.generate import TransformersGenerator, VllmServerGenerator, eos_ids
        from llt.train.grpo.trainer import GrpoTrainer

        g, args, tok = self.grpo, run.train, common["processing_class"]
        ref_model = None
        if g.beta != 0.0 and not run.lora.use_lora:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(args.device)
        eos = eos_ids(tok, model)
        trainer = GrpoTrainer(**common, grpo=g, reward_funcs=self.reward_funcs, generator=None,
                              ref_model=ref_model, eos=eos)
        if g.use_vllm:
            trainer.generator = VllmServerGenerator(g, accelerator=trainer.accelerator, eos=eos)
        else:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            trainer.generator = TransformersGenerator(g, eos, pad, trainer.accelerator, zero3=zero_stage(args) == 3)
        return trainer
