"""A request of another API read as chat messages, and how its params map back.

`extract_input` names the parts it cannot check (or images it cannot decode) by their chat
path, `messages[i].content[j]`; the client sent `input[3].content[1]` or `prompt[2]`. An
`ApiBody` remembers, for each chat message it was read into, where that message came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from proxy.request_body import ChatBody


@dataclass(slots=True)
class ApiBody(ChatBody):
    """`params[i]` is where message i came from (`input[3]`, `instructions`, `prompt[1]`),
    `content_params[i]` the path of its content (`input[3].content`, `input[3].output`)."""

    params: tuple[str, ...] = ()
    content_params: tuple[str, ...] = ()


_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](\.content)?")


def param_namer(body: ChatBody) -> Callable[[str], str] | None:
    """Translates `messages[i]...` params into the API's own names (None: a chat body)."""
    if not isinstance(body, ApiBody):
        return None
    params, content_params = body.params, body.content_params

    def rename(param: str) -> str:
        def sub(match: re.Match[str]) -> str:
            i = int(match.group(1))
            if i >= len(params):
                return match.group(0)
            return content_params[i] if match.group(2) else params[i]

        return _MESSAGE_PARAM.sub(sub, param, count=1)

    return rename
