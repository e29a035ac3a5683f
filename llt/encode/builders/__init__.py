"""Records -> token samples with loss spans and document boundaries: one builder per encode
type, behind one interface (`base.Builder`: records in, a `SampleBatch` out; `finish()` at
the end).

`base` (the interface, the counts a worker keeps, the record fields read, batched
tokenizing that names the record that breaks it, `--overlong`), `pretrain` (documents
streamed and cut every `max_length`), `qa` (the seed's plain q/a format), `chat` (chat
records and `qa --qa_template chat`, through `llt.encode.chat`) `preference` (TRL's
preference records -> pair samples) and `kto` (TRL's unpaired records -> labelled examples).
"""

from __future__ import annotations


def make_builder(encode_type: str, tok, info, max_length: int, overlong: str = "drop",
                 qa_template: str = "plain", strict: bool = False, names=None, chat=None):
    """The builder for `encode_type`; `chat` (a `ChatEncoder`) for chat, `qa --qa_template
    chat` and conversational preference records."""
    from llt.encode.builders.chat import ChatBuilder
    from llt.encode.builders.kto import KtoBuilder
    from llt.encode.builders.preference import PreferenceBuilder
    from llt.encode.builders.pretrain import PretrainBuilder
    from llt.encode.builders.qa import QABuilder

    common = dict(overlong=overlong, strict=strict, names=names)
    if encode_type == "pretrain":
        return PretrainBuilder(tok, info, max_length, **common)
    if encode_type == "preference":
        return PreferenceBuilder(tok, info, max_length, chat=chat, **common)
    if encode_type == "kto":
        return KtoBuilder(tok, info, max_length, chat=chat, **common)
    if encode_type == "chat" or qa_template == "chat":
        if chat is None:
            raise ValueError("chat encoding needs a ChatEncoder")
        return ChatBuilder(tok, info, max_length, chat=chat, from_qa=encode_type == "qa", **common)
    return QABuilder(tok, info, max_length, **common)
