"""How a conversation is shown to a reward model.

With a chat template (most decoder RMs: Skywork-Reward, ArmoRM, ...) the whole conversation is
rendered by ``tokenizer.apply_chat_template``. Without one (encoder cross-encoders such as the demo
RM), the conversation becomes a text *pair*: the context (every message before the response, one
``role: content`` line each) and the response, so truncation can cut the context first.

>>> plain_pair([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
('user: Hi', 'Hello!')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def plain_pair(messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(context, response) for a conversation whose last message is the assistant response."""
    context = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    return context, messages[-1]["content"]
