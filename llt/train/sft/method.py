"""Supervised fine-tuning and continued pre-training as a training method: token corpora
(pretrain, qa, chat), the chunked loss with per-corpus sums, `LltTrainer`."""

from __future__ import annotations

from llt.errors import DataError
from llt.train.methods import RunArgs, TrainingMethod


class SFT(TrainingMethod):
    command = "llt train"

    def check_corpora(self, data) -> None:
        """SFT on a pair corpus would train the rejected completions too."""
        kinds = {h.get("encode_type") for h in data.dataset.headers}
        if "preference" in kinds:
            raise DataError("--data_path holds preference pairs (encode_type preference); train them with "
                            "recipes/dpo.py (`llt dpo`), which trains the chosen completion against the rejected")
        if "kto" in kinds:  # SFT would imitate the undesirable completions too
            raise DataError("--data_path holds KTO examples (encode_type kto), whose undesirable completions SFT "
                            "would imitate; train them with recipes/kto.py (`llt kto`)")

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        from llt.model.loss import use_chunked_loss

        # Liger's fused linear cross-entropy (--use_liger_kernel, patched in by HF) does the
        # same job in one kernel; llt's chunked loss is the portable default.
        return bool(run.model.chunked_loss and not run.train.use_liger_kernel
                    and use_chunked_loss(model, n_groups=n_groups))

    def trainer(self, run: RunArgs, model, common: dict):
        from llt.train.trainer import LltTrainer

        return LltTrainer(**common)
