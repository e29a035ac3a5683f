"""The model as llt builds it, for training and for everything after it (export, generate).

`loading` (tokenizer and model: attention implementation, dtype, added tokens and their
embedding rows, the figures the MFU estimate needs), `attention` (SDPA run on each
document alone, registered with transformers), `loss` (the chunked loss on trained
positions, per-corpus sums, per-token losses for preference methods, a MoE router's
load-balancing term), `reward` (a reward model's forward: one score per document of a
padding-free batch), `lora` (PEFT adapters, trainable added tokens) and `quant` (QLoRA: a
4- or 8-bit base through bitsandbytes).
"""

import logging

# bitsandbytes (the qlora extra) warns at import, on CPUs with AVX512-BF16, that an optional
# `kernels` package is missing, and then uses its own kernel; every launch would print it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
