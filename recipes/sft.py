"""Fine-tune or continue pre-training a causal LM on shards made by `llt encode`.

    accelerate launch recipes/sft.py --config recipes/lora_sft.yaml \\
        --model_path MODEL --data_path out/alpaca
    # also: torchrun --nproc_per_node N recipes/sft.py ..., deepspeed recipes/sft.py ...,
    # or plain `python recipes/sft.py ...` / `llt train ...` on one device.

The steps every training method shares (parse, tokenizer, data, model, LoRA, trainer, train)
are in llt/train/build.py; what is SFT's own is llt/train/sft/.
"""

import sys

from llt.train.sft import main

if __name__ == "__main__":
    sys.exit(main())
