"""KTO on labelled examples made by `llt encode --encode_type kto` (or on preference pairs
with --pairs_as_kto).

    accelerate launch recipes/kto.py --config recipes/lora_kto.yaml \\
        --model_path MODEL --data_path out/feedback
    # also: torchrun --nproc_per_node N recipes/kto.py ..., deepspeed recipes/kto.py ...,
    # or plain `python recipes/kto.py ...` / `llt kto ...` on one device.

Every flag of recipes/sft.py applies; the method is llt/train/kto/.
"""

import sys

from llt.train.kto import main

if __name__ == "__main__":
    sys.exit(main())
