"""Stage 5, run folders and what uses them after training.

`folder` (the one run-folder API: file names, complete checkpoints, newest, best, what a
path names), `history` (the loss history and its plot), `plot` (`llt plot`), `load` (any
checkpoint as a plain model: full, LoRA, DeepSpeed ZeRO), `export` (`llt export`) and
`generate` (`llt generate`).
"""
