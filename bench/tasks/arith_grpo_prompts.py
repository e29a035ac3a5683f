"""The GRPO real run's task: "What is a + b?" with one-digit numbers, the answer alone.

    python bench/tasks/arith_grpo_prompts.py arith.jsonl              # 600 training prompts
    python bench/tasks/arith_grpo_prompts.py heldout.jsonl --seed 1 --n 100

Each line: {"prompt": [{"role": "user", "content": ...}], "answer": "8"}; the `answer` field
reaches the reward functions in bench/tasks/arith_rewards.py (docs/grpo.md).
"""

import argparse
import json
import random


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w") as f:
        for _ in range(args.n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            q = f"What is {a} + {b}? Answer with just the number."
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}], "answer": str(a + b)}) + "\n")


if __name__ == "__main__":
    main()
