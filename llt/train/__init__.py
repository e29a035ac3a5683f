"""Stage 4, `llt train`: the training run on the batches of `llt.data`.

`config` (the four argument dataclasses), `parse` (YAML recipe + flags), `model`
(tokenizer and model loading, added tokens), `lora`, `quant` (QLoRA: a 4- or 8-bit base),
`attention` (per-document SDPA on
CPU), `loss` (the chunked loss on trained positions), `checks` (start-up verification),
`trainer` (`LltTrainer`), `hf_hooks` (its only private-hook overrides), `resume` (exact
resume as plain functions), `checkpointing` (atomic saves, rotation), `evaluate` (the
held-out loss), `callbacks` (throughput, mix, loss report, save schedule, preemption),
`report` (the run folder's records), `sft` (the recipe body behind `recipes/sft.py`
and `llt train`), and for preference tuning: `preference` (the DPO/IPO/SimPO/ORPO losses
and their flags), `pref_setup` (which trainer, which reference policy), `pref_trainer`
(`PreferenceTrainer`), `pref_eval` (held-out pairs), `ref_cache` (precomputed reference
log-probs) and `dpo` (the recipe body behind `recipes/dpo.py` and `llt dpo`).
"""

import logging

# bitsandbytes (the qlora extra) warns at import, on CPUs with AVX512-BF16, that an optional
# `kernels` package is missing, and then uses its own kernel; every launch would print it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
