"""Who calls an API route, and the routes only operators may use, on a server shared with
`--multi-user` (modules.serving.accounts).

Without `--multi-user` every caller is `SHARED_USER`, the operator of everything (A1111), so
nothing here refuses anything. With it, each authenticated user name is a `User`; the operators
are those of `--admin-users`. What is theirs alone through the API: global settings
(`POST /sdapi/v1/options` beyond a user's own checkpoint, VAE and clip skip), reloading and
unloading checkpoints, merging, and the model-source routes that write files (downloads, cards,
conversions). A refusal is a 403 that names the flag, so the user knows whom to ask.
"""

from __future__ import annotations

from modules.api.errors import ApiError
from modules.serving.accounts import User

OPERATOR_FLAG = "--admin-users"


def operators_only(what: str, hint: str = "ask one of them") -> ApiError:
    """The 403 for a user who is not an operator; `what` names the action ("merging checkpoints"),
    `hint` what the user can do instead."""
    return ApiError(403, f"{what} is for the operators of this shared server, the users named in {OPERATOR_FLAG}; "
                         f"{hint}", name="Forbidden")


def require_operator(user: User, what: str) -> None:
    """Raise `operators_only(what)` unless `user` is an operator (always true without --multi-user)."""
    if not user.admin:
        raise operators_only(what)
