"""A conversation in, its samples out: by its shape's plan where one applies (`plans`),
else by the turn rule itself (`rule`). Both give the same samples (tested); the plan only
saves renders."""

from __future__ import annotations

from llt.encode.chat.messages import Conversation
from llt.encode.chat.plans import ShapePlans
from llt.encode.chat.rule import ChatOptions, ChatSample, turn_samples
from llt.encode.chat.template import ChatTemplate


class ChatEncoder:
    """One conversation in, its `ChatSample`s out."""

    def __init__(self, template: ChatTemplate, options: ChatOptions):
        self.template, self.options = template, options
        self.plans = ShapePlans(template, options)
        self.planned = self.exact = 0  # conversations each way (for tests and the bench)

    def samples(self, conv: Conversation, say, start: int = 0) -> list[ChatSample] | None:
        """The conversation's samples; None for a counted skip (--unrendered skip).

        `say(why)` builds the RecordError that names the record. Only assistant turns from
        message `start` on are trained (a preference pair's completion after its prompt).
        """
        out = self.plans.samples(conv, start)
        if out is not None:
            self.planned += 1
            return out
        self.exact += 1
        return turn_samples(self.template, conv, self.options, say, start)
