"""Chat records -> samples whose trained tokens are exactly what the model generates.

Read `rule` first: it is the whole of what is trained and why, on its own. The rest feeds
it or makes it fast:

`messages` (records checked and brought to one shape: tool calls, reasoning, text parts),
`environment` (the jinja environment transformers renders chat templates in, without
importing transformers), `template` (`ChatTemplate`: a template compiled, fitted to how it
wants messages, rendered directly), `rule` (the turn rule: prompt and generated text per
assistant turn, samples, what a template must not drop), `plans` (the rule run once per
conversation shape, records filled in), `encoder` (`ChatEncoder`: a plan where one applies,
else the rule), `joins` (which prompts and turns go to the tokenizer as one text, exactly,
and how their tokens split back) and `check` (`llt inspect --check`: sampled records
re-encoded against transformers' own rendering).
"""
