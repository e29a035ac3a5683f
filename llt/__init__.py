"""llt (llm-lite-trainer): fine-tuning and continued pre-training of causal LLMs.

The package follows the data's journey, one folder a stage (docs/architecture.md):
`encode` (user records -> shards), `shards` (the on-disk format), `data` (shards ->
batches), `train` (the training run), `runs` (run folders, export, generate, plot).
"""

__version__ = "0.1.0"
