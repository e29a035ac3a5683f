"""Train like recipes/sft.py, also writing which dataset samples each rank trained on.

    accelerate launch ... tests/helpers/record_samples.py OUT [training flags]

Writes OUT.rank<R>.json at the end, and appends every fetched index to OUT.rank<R>.log as
it goes (so a process killed with -9 leaves its record). Used by the tests to check that
an epoch trains every sample exactly once and that a killed-and-resumed run trains the
same samples in the same order; the recording wraps the dataset, nothing in llt changes.
"""

import json
import os
import sys

from llt.data.dataset import ShardDataset
from llt.train.sft import build_trainer

seen = []
_getitem = ShardDataset.__getitem__
_log = None


def recording_getitem(self, i):
    seen.append(int(i))
    _log.write(f"{int(i)}\n")
    _log.flush()
    return _getitem(self, i)


def main() -> None:
    global _log
    ShardDataset.__getitem__ = recording_getitem
    out = sys.argv[1]
    _log = open(f"{out}.rank{os.environ.get('RANK', '0')}.log", "a")
    trainer = build_trainer(sys.argv[2:])
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"seen": seen, "world_size": trainer.args.world_size,
                   "output_dir": trainer.args.output_dir}, f)


if __name__ == "__main__":
    main()
