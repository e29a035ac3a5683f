"""Stage 4, training: what every training method shares, and the methods, each a peer.

Shared: `config` (the four argument dataclasses), `parse` (YAML recipe + flags -> `RunArgs`),
`methods` (`TrainingMethod`, what a method supplies, and `METHODS`, the one list of them),
`build` (flags -> tokenizer, data, model, the method's loss, collator, LoRA, callbacks ->
the trainer), `setup` (what a run changes outside its arguments: logging, progress bars,
the run folder's name), `run` (argv -> build, train, exit code, process-group teardown),
`checks` (start-up verification), `preflight` (every rank and node runs the same thing, on
storage it has checked), `node_copies` (a whole copy of each checkpoint on every node's own
disk), `watchdog` (a dead or frozen peer ends the run within `--node_timeout`), `trainer` (`LltTrainer`), `hf_hooks` (its only
private-hook overrides), `resume` (exact resume as plain functions), `checkpointing`
(atomic saves, rotation), `evaluate` (the held-out loss), `callbacks` (throughput, mix,
loss report, save schedule, preemption, progress lines), `user_callbacks` (the user's own,
named in a recipe), `report` (the run folder's records).

The methods, a folder each: `sft` (supervised fine-tuning and continued pre-training,
`llt train`, recipes/sft.py), `preference` (DPO, IPO, SimPO, ORPO: `llt dpo`,
recipes/dpo.py), `reward` (reward models: `llt reward`, recipes/reward.py, `llt score`) and
`kto` (KTO on labelled examples: `llt kto`, recipes/kto.py) and `grpo` (online RL with the
user's reward functions on prompts read directly: `llt grpo`, recipes/grpo.py). The model itself (loading,
LoRA, quantization, attention, the chunked loss) is `llt.model`.
"""
