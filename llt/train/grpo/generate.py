"""Where GRPO's completions come from: one interface, two backends.

`Generator.generate(model, prompt_ids, seed)` returns one completion (token ids) per prompt
of the list, a prompt appearing G times in a row for its group; each completion ends at its
first EOS (kept: the model learns to stop) or after `max_completion_length` tokens.

* `TransformersGenerator` (the default, and what is tested here): transformers' `generate`
  with its KV cache on the training model itself, prompts left-padded into one batch, the
  LoRA adapter active, dropout off (eval mode), gradient checkpointing paused (it forbids the
  cache), ZeRO-3's partitioned weights gathered for the call. Sampling is seeded per
  generation batch from (--seed, batch number, rank) inside `torch.random.fork_rng`, so a
  resumed run draws what an uninterrupted one would have, and nothing else's random stream
  moves.
* `VllmServerGenerator` (`--use_vllm`, GPU machines): a server started with TRL's
  `trl vllm-serve --model MODEL`, reached with TRL's own client (its protocol: POST
  /generate/ with token-id prompts and `n`, weights pushed with `update_named_param` over
  NCCL). After each optimizer step the policy's weights (LoRA merged in) are pushed before
  the next generation. Not verified on this project's CPU machines (no vLLM, no NCCL): the
  calls it makes are tested against a stand-in client.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from llt.errors import ConfigError


def generation_seed(seed: int, batch: int, rank: int) -> int:
    """The sampling seed of generation batch `batch` on `rank` (independent streams)."""
    return int(np.random.SeedSequence([seed, batch, rank, 0x6770]).generate_state(1, dtype=np.uint64)[0] >> 1)


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """`ids` up to and including the first EOS.

    Examples:
        >>> cut_at_eos([5, 6, 2, 0, 0], {2})
        [5, 6, 2]
    """
    for k, t in enumerate(ids):
        if t in eos:
            return ids[:k + 1]
    return ids


class Generator:
    def generate(self, model, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        raise NotImplementedError

    def policy_changed(self, model) -> None:
        """The policy's weights changed (an optimizer step): a backend holding its own copy updates it."""


class TransformersGenerator(Generator):
    """transformers' `generate` on the training model (see the module docstring)."""

    def __init__(self, args, eos: set[int], pad: int, accelerator=None, zero3: bool = False):
        self.args, self.accelerator, self.zero3 = args, accelerator, zero3
        self.eos, self.pad = set(eos), pad

    def generate(self, model, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        from transformers import GenerationConfig

        a = self.args
        unwrapped = self.accelerator.unwrap_model(model) if self.accelerator is not None else model
        device = next(unwrapped.parameters()).device
        width = max(map(len, prompt_ids))
        ids = torch.full((len(prompt_ids), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        config = GenerationConfig(do_sample=True, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k or None,
                                  max_new_tokens=a.max_completion_length, eos_token_id=sorted(self.eos),
                                  pad_token_id=self.pad, use_cache=True)
        devices = [device] if device.type == "cuda" else []
        with _generation_mode(unwrapped, model, self.zero3), torch.no_grad(), \
                torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(seed)
            out = unwrapped.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=config)
        return [cut_at_eos(row, self.eos) for row in out[:, width:].tolist()]


def eos_ids(tokenizer, model=None) -> set[int]:
    """The tokens that end a completion: the tokenizer's EOS and the model's generation
    config's EOS tokens (a chat model's end-of-turn), as TRL stops."""
    out = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    out |= set([extra] if isinstance(extra, int) else (extra or []))
    return out


@contextlib.contextmanager
def _generation_mode(unwrapped, wrapped, zero3: bool):
    """Eval mode (no dropout), the KV cache allowed (gradient checkpointing paused), ZeRO-3's
    weights gathered; everything restored after."""
    was_training = unwrapped.training
    checkpointing = getattr(unwrapped, "is_activation_checkpointing",
                            getattr(unwrapped, "is_gradient_checkpointing", False))
    if checkpointing:
        unwrapped.gradient_checkpointing_disable()
    unwrapped.eval()
    # llt's per-document SDPA takes padding-free rows; generation's rows are left-padded, with a mask
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    attention = base.config._attn_implementation
    if attention == "llt_sdpa_varlen":
        base.set_attn_implementation("sdpa")
    gather = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(wrapped.parameters()), modifier_rank=None)
    try:
        with gather:
            yield
    finally:
        if attention != base.config._attn_implementation:
            base.set_attn_implementation(attention)
        if checkpointing:
            unwrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unwrapped.train(was_training)


class VllmServerGenerator(Generator):
    """Completions from a `trl vllm-serve` server (see the module docstring); `client` is
    TRL's `VLLMClient` or anything with its `generate`, `update_named_param` and
    `reset_prefix_cache`."""

    def __init__(self, args, client=None, accelerator=None, eos: set[int] = frozenset()):
        self.args, self.accelerator, self.eos = args, accelerator, set(eos)
        if client is None:
            try:
                from trl.generation.vllm_client import VLLMClient
            except ImportError as e:
                raise ConfigError("--use_vllm: TRL's vLLM client is needed (pip install -e \".[vllm_client]\"); "
                                  f"{e}") from None
            client = VLLMClient(base_url=args.vllm_server_base_url, connection_timeout=60)
            if accelerator is None or accelerator.is_main_process:
                client.init_communicator(device=torch.cuda.current_device() if torch.cuda.is_available() else 0)
        self.client = client
        self.stale = False  # the server's weights are the policy's at start (it loaded the same model)

    def policy_changed(self, model) -> None:
        self.stale = True

    def generate(self, model, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        if self.stale:
            self.push_weights(model)
            self.stale = False
        a = self.args
        # one request per group: the server samples n completions of each prompt
        unique = prompt_ids[::a.num_generations]
        out = self.client.generate(prompts=unique, n=a.num_generations, temperature=a.temperature, top_p=a.top_p,
                                   top_k=a.top_k, max_tokens=a.max_completion_length,
                                   generation_kwargs={"seed": seed})
        return [cut_at_eos(list(c), self.eos) for c in out["completion_ids"]]

    def push_weights(self, model) -> None:
        """The policy's weights to the server (the main process; the others wait): LoRA
        merged in for the push and taken out again, names as the base model's."""
        unwrapped = self.accelerator.unwrap_model(model) if self.accelerator is not None else model
        main = self.accelerator is None or self.accelerator.is_main_process
        merged = hasattr(unwrapped, "merge_adapter")
        if merged:
            unwrapped.merge_adapter()
        try:
            if main:
                for name, param in unwrapped.named_parameters():
                    clean = server_name(name)
                    if clean is not None:
                        self.client.update_named_param(clean, param.data)
                self.client.reset_prefix_cache()
        finally:
            if merged:
                unwrapped.unmerge_adapter()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def server_name(name: str) -> str | None:
    """The base model's name of a (PEFT-wrapped) parameter; None for adapter weights.

    Examples:
        >>> server_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
        'model.layers.0.self_attn.q_proj.weight'
        >>> server_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
        True
    """
    if "lora_" in name:
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer", "").replace("original_module.", "")
