"""The flags of GRPO (`llt grpo`, recipes/grpo.py): where the prompts come from (the flags
`llt encode` reads the same sources with), the reward functions, generation, and the loss,
named and defaulting as TRL's GRPOConfig (TRL 1.16)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llt.errors import ConfigError


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class GrpoArguments:
    """The flags of recipes/grpo.py beside the shared training flags."""

    config_key = "grpo_args"

    # ---- prompts: read directly, as `llt encode` reads records (llt.train.grpo.prompts) ----
    input_path: list[str] = field(default_factory=list, **_help(
        "Prompt files or folders: .jsonl/.json/.parquet/.csv/.tsv or a HF `datasets` folder (as llt encode "
        "--input_path)."))
    data_loader_path: str | None = field(default=None, **_help(
        "A Python file whose data_loader() yields the prompt records (as llt encode --data_loader_path)."))
    dataset: str | None = field(default=None, **_help(
        "Read the prompts with datasets.load_dataset: a Hub id, a local Hub-style folder or a builder name "
        "(json, parquet, csv) with --data_files."))
    dataset_config: str | None = field(default=None, **_help("The --dataset configuration (subset) name."))
    data_files: list[str] = field(default_factory=list, **_help("Data files (or globs) for --dataset."))
    split: str = field(default="train", **_help("Split to read from --dataset or a HF DatasetDict folder."))
    prompt_field: str = field(default="prompt", **_help(
        "The record's prompt: a string (used as is) or a list of chat messages (rendered with the chat "
        "template's generation prompt, as at inference). The record's other fields reach the reward functions."))
    max_prompt_length: int = field(default=512, **_help(
        "Tokens a prompt may have; a longer one is refused naming its record (nothing is cut)."))
    # ---- rewards ----
    reward_funcs: list[str] = field(default_factory=list, **_help(
        "Reward functions, each path/to/rewards.py:NAME (or package.module:NAME), called as TRL calls them, "
        "or the folder of a reward model (llt reward, exported or a run's checkpoint) scoring prompt + completion."))
    # ---- generation ----
    top_p: float = field(default=1.0, **_help("Nucleus sampling: the smallest set of tokens with this probability."))
    top_k: int = field(default=0, **_help("Sample among the k most likely tokens (0: all)."))
    use_vllm: bool = field(default=False, **_help(
        "Generate with a vLLM server started by TRL's `trl vllm-serve` (GPU machines; weights are pushed to "
        "it after each optimizer step). Off: transformers' generate with a KV cache, in the training process."))
    vllm_server_base_url: str = field(default="http://localhost:8000", **_help(
        "The vLLM server (`trl vllm-serve --model MODEL`) with --use_vllm."))
    log_completions_steps: int = field(default=10, **_help(
        "Every this many optimizer steps, write the generation batch's prompts, completions, rewards and "
        "advantages to completions.jsonl in the run folder (0: never)."))

    num_generations: int = field(default=8, **_help("G: completions generated per prompt (a group)."))
    max_completion_length: int = field(default=512, **_help(
        "Tokens generated at most per completion; dr_grpo divides by it."))
    temperature: float = field(default=1.0, **_help(
        "Sampling temperature; log-probs are those of the logits divided by it, as sampled."))
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = field(default="dapo", **_help(
        "grpo: each completion's token mean, then the mean over completions; bnpo: the token mean of "
        "the micro-batch; dr_grpo: the token sum over completions x max_completion_length (Dr. GRPO); "
        "dapo: the token sum over the generation batch's tokens (DAPO, TRL's default)."))
    beta: float = field(default=0.0, **_help(
        "Weight of the KL to the reference (k3 estimator per token); 0 skips the reference (TRL's default)."))
    epsilon: float = field(default=0.2, **_help("Clipping: the ratio is kept within [1 - epsilon, 1 + epsilon_high]."))
    epsilon_high: float | None = field(default=None, **_help("Upper clipping bound (DAPO's clip-higher); default epsilon."))
    num_iterations: int = field(default=1, **_help(
        "Optimisation passes over each generation batch (μ); above 1 the ratio is against the "
        "log-probs at generation time."))
    scale_rewards: Literal["group", "batch", "none"] = field(default="group", **_help(
        "Advantages divided by the group's reward std (group), the batch's (batch), or not at all "
        "(none, as Dr. GRPO recommends)."))
    mask_truncated_completions: bool = field(default=False, **_help(
        "Completions cut at max_completion_length (no EOS) take no part in the loss (DAPO)."))
    use_bias_correction_kl: bool = field(default=True, **_help(
        "Multiply the per-token KL by the importance ratio (TRL's default)."))
    reward_weights: list[float] | None = field(default=None, **_help(
        "One weight per reward function (default 1 each)."))

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError(f"--num_generations {self.num_generations}: a group needs at least 2 completions "
                              "for its advantages to be relative to anything")
        if self.max_completion_length < 1 or self.temperature <= 0 or self.num_iterations < 1:
            raise ConfigError("--max_completion_length and --num_iterations must be >= 1 and --temperature > 0")
        if self.max_prompt_length < 1 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.log_completions_steps < 0:
            raise ConfigError("--max_prompt_length must be >= 1, --top_k and --log_completions_steps >= 0 and "
                              "--top_p in (0, 1]")
        if self.beta < 0 or self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError("--beta, --epsilon and --epsilon_high must be >= 0")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"--reward_weights: {len(self.reward_weights)} weights for {len(self.reward_funcs)} "
                              "--reward_funcs; give one weight per function")

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high
