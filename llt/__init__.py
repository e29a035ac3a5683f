"""llt (llm-lite-trainer): fine-tuning and continued pre-training of causal LLMs.

`llt encode` turns user data into token shards (`llt.data`); see README.md.
"""

__version__ = "0.1.0"
