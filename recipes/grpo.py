"""GRPO (and DAPO, Dr. GRPO, BNPO) on prompt records with your reward functions.

    accelerate launch recipes/grpo.py --config recipes/lora_grpo.yaml --model_path MODEL \\
        --input_path prompts.jsonl --reward_funcs rewards.py:correct rewards.py:format
    # also: torchrun --nproc_per_node N recipes/grpo.py ..., deepspeed recipes/grpo.py ...,
    # or plain `python recipes/grpo.py ...` / `llt grpo ...` on one device.

Every flag of recipes/sft.py applies but --data_path (prompts are read directly); the method
is llt/train/grpo/.
"""

import sys

from llt.train.grpo import main

if __name__ == "__main__":
    sys.exit(main())
