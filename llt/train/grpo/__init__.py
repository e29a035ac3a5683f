"""GRPO (group-relative policy optimisation) on llt's machinery: the parts built so far.

`config` (`GrpoArguments`: TRL's GRPOConfig names and defaults for what is built),
`rewards` (the user's reward functions: loaded from a file as the seed loads
`data_loader()`, called with TRL's convention, checked, weighted, turned into group-relative
advantages as TRL does) and `losses` (TRL's GRPO loss types, clipping and KL term on llt's
padding-free per-token log-probs; equal to TRL's GRPOTrainer, tests/test_grpo.py).

Not built yet: prompts, generation and the trainer that ties them into a run (there is no
`llt grpo` command, and `METHODS` does not list it); docs/grpo.md says what is planned.
"""
