"""KTO examples (TRL's unpaired preference format) -> one-document samples with a label.

Records, field names being flags (`--prompt_field`, `--completion_field`, `--label_field`):

* standard: `{"prompt": str, "completion": str, "label": bool}`, tokenized as TRL's
  KTOTrainer does: `prompt` and `prompt + completion + EOS` each whole (with the tokenizer's
  own prefix), the completion starting where their ids part;
* conversational: `prompt` and `completion` as message lists, rendered with the chat template
  as for preference pairs (`builders.preference`): the prompt as the model gets it at
  inference, the completion's assistant turns as it generates them.

The label (true: desirable, false: undesirable) must be a JSON boolean: a 0/1 or "yes" is
refused naming the record, since a silently flipped label trains the model the wrong way.
It is stored per document in the shard (`doc_labels`, format 1.2), so packing
(`--merge_data`) keeps each example's label with it.
"""

from __future__ import annotations

import numpy as np

from llt.encode.builders.preference import PreferenceBuilder


class KtoBuilder(PreferenceBuilder):
    """KTO records in, labelled one-document samples out."""

    def side_fields(self) -> tuple[str, ...]:
        return (self.names.completion,)

    def doc_values(self, rec, say) -> dict[str, np.ndarray]:
        return {"doc_labels": np.array([self.label(rec, say)], np.uint8)}

    def label(self, rec, say) -> int:
        name = self.names.label
        if name not in rec:
            raise say(f"missing field {name!r} (fields: {', '.join(map(repr, rec))})")
        value = rec[name]
        if not isinstance(value, (bool, np.bool_)):
            raise say(f"field {name!r} is {value!r} ({type(value).__name__}), not a boolean: true for a "
                      "desirable completion, false for an undesirable one")
        return int(bool(value))
