"""Preference tuning (DPO, IPO, SimPO, ORPO) of a causal LM on pairs made by
`llt encode --encode_type preference`.

    accelerate launch recipes/dpo.py --config recipes/lora_dpo.yaml \\
        --model_path MODEL --data_path out/pairs --pref_loss sigmoid --beta 0.1
    # also: torchrun --nproc_per_node N recipes/dpo.py ..., deepspeed recipes/dpo.py ...,
    # or plain `python recipes/dpo.py ...` / `llt dpo ...` on one device.

Every flag of recipes/sft.py applies; the method is llt/train/preference/.
"""

import sys

from llt.train.preference import main

if __name__ == "__main__":
    sys.exit(main())
