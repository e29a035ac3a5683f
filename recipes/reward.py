"""A reward model (Bradley-Terry, one scalar per sequence) trained on pairs made by
`llt encode --encode_type preference`.

    accelerate launch recipes/reward.py --config recipes/lora_reward.yaml \\
        --model_path MODEL --data_path out/pairs
    # also: torchrun --nproc_per_node N recipes/reward.py ..., deepspeed recipes/reward.py ...,
    # or plain `python recipes/reward.py ...` / `llt reward ...` on one device.

Every flag of recipes/sft.py applies; the method is llt/train/reward/.
"""

import sys

from llt.train.reward import main

if __name__ == "__main__":
    sys.exit(main())
