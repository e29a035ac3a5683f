"""Training configuration: four typed dataclasses, one flag per field.

`ModelArguments`, `DataArguments`, `LoraArguments` and `LltTrainingArguments` (HF's
`TrainingArguments` extended) are parsed together by `llt.train.parse.parse_args`: a
YAML recipe gives defaults, command-line flags override it. The seed trainer's flags
keep working: `--max_epochs`, `--load_ckpt_path` and `--deepspeed_config_path` are
aliases of HF's `--num_train_epochs`, `--resume_from_checkpoint` and `--deepspeed`;
`--output_path`/`--save_name` name a timestamped run folder; `--save_optimizer` makes
checkpoints resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import TrainingArguments

from llt.errors import ConfigError
from llt.resources import shipped, user_or_shipped

__all__ = ["ConfigError", "DataArguments", "LltTrainingArguments", "LoraArguments", "ModelArguments"]


@dataclass
class ModelArguments:
    model_path: str | None = field(default=None, metadata={
        "help": "HF model folder (or hub id) to start from. Required."})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "tokenizer folder; default: --model_path"})
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "llt_sdpa_varlen", "flex_attention",
                                 "eager"] = field(
        default="auto", metadata={"help": "auto: flash_attention_2 when flash-attn is installed and "
                                          "a CUDA GPU is used; on CPU llt_sdpa_varlen (SDPA per "
                                          "document); else sdpa"})
    chunked_loss: bool = field(default=True, metadata={
        "help": "compute lm_head and the loss only at trained positions, a chunk at a time, "
                "instead of full-vocabulary logits everywhere (same loss; less time and memory)"})
    add_tokens: list[str] | None = field(default=None, metadata={
        "help": "special tokens to add (space- or comma-separated); their embedding rows start "
                "as the mean of the existing ones and are trained, with LoRA too"})
    # QLoRA (llt.model.quant); the names are TRL's ModelConfig's.
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: load the base model's linear layers in 4-bit (bitsandbytes) and train LoRA "
                "adapters on top; needs --use_lora and the qlora extra"})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "load the base model's linear layers in 8-bit (bitsandbytes LLM.int8); needs --use_lora"})
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={
        "help": "4-bit data type: nf4 (NormalFloat, the QLoRA paper's) or fp4"})
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "dtype the 4-bit layers compute in; auto: the training dtype (bf16 or fp32)"})
    use_bnb_nested_quant: bool = field(default=False, metadata={
        "help": "double quantization: quantize the 4-bit blocks' scales too (~0.4 bits a weight saved)"})
    bnb_4bit_quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={
            "help": "dtype the packed 4-bit weights are stored in; auto: uint8, or the training dtype "
                    "under DeepSpeed ZeRO-3 (which partitions parameters of one dtype)"})


# Fields a YAML recipe may give in a richer form than their flag: corpora as a mapping,
# `{name: path[:weight]}` or `{name: {path: P, weight: W}}` (llt.data.corpora). The recipe
# check (llt.values) reads these types instead of the declared ones; HF's parser, which
# takes one type a flag, keeps the declared `list[str]`.
# Callbacks as `[{name: ..., kwargs: {...}}]` or `{name: kwargs}` (llt.train.user_callbacks).
RECIPE_TYPES = {"data_path": list[str] | dict | None, "eval_data_path": list[str] | dict | None,
                "callbacks": list[str | dict] | dict | None}


@dataclass
class DataArguments:
    data_path: list[str] | None = field(default=None, metadata={
        "help": "corpus folder(s) from `llt encode`, each `[name=]path[:weight]`; every .idx/.bin "
                "under a path is used. With weights (for every corpus), each epoch holds that share "
                "of tokens from each corpus, up- or down-sampled. Required."})
    eval_data_path: list[str] | None = field(default=None, metadata={
        "help": "held-out corpus folder(s) (`[name=]path`), encoded like the training data; "
                "evaluated every --eval_steps"})
    eval_split: float = field(default=0.0, metadata={
        "help": "hold out this fraction (< 1) or number (>= 1) of each corpus's samples for "
                "evaluation, never trained on; the same samples whatever the seed"})
    shuffle_data: bool = field(default=True, metadata={
        "help": "shuffle the sample order each epoch (from --seed/--data_seed and the epoch)"})
    verify_data: bool = field(default=True, metadata={
        "help": "before training, check every shard as `llt verify` does (sizes, xxh3 checksums, "
                "headers, ids below the vocabulary); reads the data once"})
    padding: Literal["free", "longest", "max_length"] = field(default="free", metadata={
        "help": "free: a micro-batch's samples end to end in one row, positions restarting per "
                "document (no padding, no cross-document attention); longest: pad to the "
                "batch's longest sample; max_length: pad to the corpus max_length (the seed's way)"})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "with --padding longest: round the padded length up to a multiple of this"})


@dataclass
class LoraArguments:
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_config_path: str = field(default="configs/lora.json", metadata={
        "help": "JSON of peft.LoraConfig fields (r, lora_alpha, lora_dropout, target_modules, ...); "
                "a path, or a file shipped with llt by its repository path (configs/lora.json)"})


@dataclass
class LltTrainingArguments(TrainingArguments):
    """HF `TrainingArguments` with llt's defaults and the seed's flags."""

    output_dir: str | None = field(default=None, metadata={
        "help": "run folder; default: <output_path>/<save_name>-<YYYYmmdd-HHMMSS>"})
    output_path: str = field(default="output", metadata={"help": "folder that holds run folders"})
    save_name: str = field(default="run", metadata={"help": "run folder name, before its timestamp"})
    num_train_epochs: float = field(default=1.0, metadata={
        "aliases": ["--max_epochs"], "help": "epochs to train (--max_steps > 0 wins)"})
    deepspeed: str | None = field(default="auto", metadata={
        "aliases": ["--deepspeed_config_path"],
        "help": "DeepSpeed JSON; auto: configs/deepspeed/zero2.json on CUDA when deepspeed is "
                "installed, none on CPU; none: no DeepSpeed"})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "aliases": ["--load_ckpt_path"],
        "help": "checkpoint saved with --save_optimizer to resume exactly (next sample, LR, RNG), or its "
                "run folder (its newest), or auto: this run's newest resumable checkpoint if any, else a "
                "fresh start (for a job a scheduler requeues)"})
    save_steps: float = field(default=0, metadata={
        "help": "save a checkpoint every N optimizer steps (0: never by steps)"})
    save_epochs: int = field(default=0, metadata={"help": "save a checkpoint every N epochs (0: never by epochs)"})
    save_final: bool = field(default=True, metadata={"help": "save a checkpoint when training ends"})
    save_optimizer: bool = field(default=False, metadata={
        "help": "also save optimizer, scheduler, RNG and data position: the checkpoint can resume"})
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(default="auto", metadata={
        "help": "auto: bf16 on GPUs that support it, else fp32"})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "device peak TFLOPS for the MFU figure; default: looked up from the GPU's name"})
    logging_steps: float = field(default=10, metadata={"help": "log every N optimizer steps"})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "where logs go besides the console and the run folder: tensorboard (installed with "
                "llt; events under <run>/runs/), any HF integration installed (wandb, mlflow, ...), "
                "all, or none"})
    callbacks: list[str] | None = field(default=None, metadata={
        "help": "your transformers TrainerCallbacks, each path/to/file.py:Class or package.module:Class, "
                "optionally =JSON keyword arguments (in a recipe: a list of names or of {name, kwargs}); "
                "they run after llt's, on every rank (docs/training.md)"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "kept False: llt's collators need the document starts"})
    node_timeout: float = field(default=300, metadata={
        "help": "several processes: a process that stops answering for this many seconds (a dead node, "
                "kill -9) makes every other exit with one line naming it, instead of waiting in a "
                "collective until --ddp_timeout; 0 turns the watch off (llt.train.watchdog)"})

    def __post_init__(self):
        """Validation and flags derived from flags only: building the arguments changes
        nothing outside them (the run's process-wide settings are `llt.train.setup`)."""
        self._llt_resolve()
        super().__post_init__()
        ds = getattr(self, "hf_deepspeed_config", None)
        if ds is not None and getattr(ds, "mismatches", None):
            # HF would raise this only once the model is wrapped; say it before any work.
            raise ConfigError(
                f"--deepspeed_config_path {self.deepspeed}: values that disagree with the training "
                "flags (set them to \"auto\" in the JSON, or change the flags):\n"
                + "\n".join(ds.mismatches))

    def _llt_resolve(self) -> None:
        """Turn llt's flags into HF's before HF validates them."""
        from llt.progress import is_tty

        # In a log file or pipe, a tqdm bar is a line per step: llt prints a line every
        # LLT_PROGRESS_SECONDS instead (ProgressLineCallback), unless --disable_tqdm is given.
        self.progress_lines = self.disable_tqdm is None and not is_tty()
        if self.progress_lines:
            self.disable_tqdm = True
        self.deepspeed = resolve_deepspeed(self.deepspeed)
        self.save_only_model = not self.save_optimizer
        if self.save_steps and self.save_steps > 0:
            self.save_strategy = "steps"
        else:
            self.save_strategy, self.save_steps = "no", 500
        if self.save_epochs < 0:
            raise ConfigError(f"--save_epochs {self.save_epochs}: must be 0 or more")
        if self.node_timeout < 0:
            raise ConfigError(f"--node_timeout {self.node_timeout}: must be 0 (off) or more seconds")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError(f"--max_epochs {self.num_train_epochs} and --max_steps {self.max_steps}: "
                              "nothing to train; give one of them a positive value")
        for flag in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, flag) < 1:
                raise ConfigError(f"--{flag} {getattr(self, flag)}: must be 1 or more")
        if self.auto_find_batch_size:
            raise ConfigError("--auto_find_batch_size: llt's sample order and exact resume are planned for "
                              "the batch size given; set --per_device_train_batch_size instead")
        if self.precision != "auto" and (self.bf16 or self.fp16) and not (
                (self.precision == "bf16" and self.bf16 and not self.fp16)
                or (self.precision == "fp16" and self.fp16 and not self.bf16)):
            raise ConfigError(f"--precision {self.precision} contradicts --bf16 {self.bf16} / "
                              f"--fp16 {self.fp16}; use --precision alone")
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 together: choose one (or --precision)")
        if self.precision == "auto":
            self.bf16 = self.bf16 or _bf16_supported(self)
        elif self.precision == "bf16":
            self.bf16 = True
        elif self.precision == "fp16":
            self.fp16 = True
        # Without --output_dir the run folder is <output_path>/<save_name>-<time>, the time
        # taken on rank 0 when the run is set up (llt.train.setup.prepare_run).
        self.stamp_run_folder = self.output_dir is None
        if self.stamp_run_folder:
            self.output_dir = str(Path(self.output_path) / self.save_name)


def cpu_only_launch(use_cpu_given: bool) -> bool:
    """Whether a multi-process launch on a machine without an accelerator, without
    --use_cpu given, should train on the CPU as the user meant (HF would otherwise set up a
    world of one in each process, and every process would train every sample). Decided
    from the environment before the arguments are built (`llt.train.parse`)."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if use_cpu_given or world < 2:
        return False
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.is_available())
    return not has_accelerator


def resolve_deepspeed(value: str | None) -> str | None:
    """`--deepspeed_config_path` to a JSON path or None.

    Examples:
        >>> resolve_deepspeed("none") is None
        True
    """
    if value in (None, "", "none", "None", "false", "False"):
        return None
    if value == "auto":
        import torch
        if not torch.cuda.is_available():
            return None
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            return None
        return str(shipped("configs/deepspeed/zero2.json"))
    if isinstance(value, dict):
        return value
    shipped_dir = shipped("configs/deepspeed")
    path = user_or_shipped(value)
    if not path.is_file() and (shipped_dir / value).is_file():
        path = shipped_dir / value
    if not path.is_file():
        raise ConfigError(f"--deepspeed_config_path {value}: no such file (shipped: "
                          f"{', '.join(sorted(p.name for p in shipped_dir.glob('*.json')))})")
    return str(path)


def _bf16_supported(args) -> bool:
    import torch
    return bool(not args.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
