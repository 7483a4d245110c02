"""What only a shared server's operators may do from the page, and how a refusal reads.

On a server started with `--multi-user` (modules.serving.accounts), the Checkpoint Merger, the Models
tab's downloads and checkpoint tools, and the Extensions tab's changes act on the whole server (its
model folders, the code it runs), so only the users named in `--admin-users` may use them; everyone
else gets a message saying so, from the handler itself (hiding a button is no guard). Without
`--multi-user` everyone is the operator, as in A1111.
"""

from __future__ import annotations

from modules.serving.accounts import User

OPERATORS_ONLY = ("{what} changes the whole shared server, so only its operators may do it: the users named in "
                  "--admin-users. Ask one of them, or have the server started with your name in --admin-users.")


def refusal(user: User, what: str) -> str | None:
    """The message for `user` trying `what` ("Merging checkpoints"), or None when they may."""
    return None if user.admin else OPERATORS_ONLY.format(what=what)


