"""Train like recipes/sft.py, also writing which dataset samples each rank trained on.

    accelerate launch ... tests/helpers/record_samples.py OUT_JSON [training flags]

Used by tests/test_train_dist.py to check that a data-parallel epoch trains every
sample exactly once; the recording wraps the dataset, nothing in llt changes.
"""

import json
import os
import sys

from llt.data.dataset import ShardDataset
from llt.train.parse import parse_args
from llt.train.sft import build

seen = []
_getitem = ShardDataset.__getitem__


def recording_getitem(self, i):
    seen.append(int(i))
    return _getitem(self, i)


def main() -> None:
    ShardDataset.__getitem__ = recording_getitem
    out = sys.argv[1]
    trainer = build(*parse_args(sys.argv[2:]))
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"seen": seen, "world_size": trainer.args.world_size,
                   "output_dir": trainer.args.output_dir}, f)


if __name__ == "__main__":
    main()
