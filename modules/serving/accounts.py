"""Who is asking: the users of a server shared on the LAN (`--multi-user`), and what each may reach.

Without `--multi-user` the server behaves as A1111's: every caller, whichever `--gradio-auth` pair
it logged in with, is the same single identity (`User.SHARED`) that owns every job, sees every image
and may change every setting.

With `--multi-user` each user name of `--gradio-auth` / `--gradio-auth-path` / `--api-auth` is a
separate user (a name in both the UI's and the API's credentials is one user). Separation means:

- jobs carry their user (`Job.owner`); interrupt, skip, cancel and status reach only the caller's
  own jobs, except for operators;
- images go to `outputs/<user>/...` and only their user (and operators) can read them back;
- the top bar's checkpoint, VAE and clip skip are the user's own choices (modules.serving.user_choices),
  carried by each job, instead of settings changed under everyone;
- global settings (the Settings tab, `POST /sdapi/v1/options` beyond the top bar's keys, merges,
  model downloads, extension changes) are for operators only: the users named in `--admin-users`.

A user name becomes a folder name, so with `--multi-user` names must be plain (letters, digits,
`.`, `_`, `-`; not starting with `.`); the start stops with a message naming a bad one.

The authentication middleware (modules.api.auth) puts the accepted user name into the request's
ASGI scope (`scope["state"][USER_STATE_KEY]`); `user_of` reads it back for API routes and Gradio
handlers alike (a Gradio `gr.Request` wraps the Starlette request of its call).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

USER_STATE_KEY = "atelier_user"
# Folder names A1111 and Atelier use directly under outputs/: a user named so would share one.
RESERVED_USER_NAMES = frozenset({"txt2img-images", "txt2img-grids", "img2img-images", "img2img-grids",
                                 "extras-images", "save", "init-images", "atelier-users"})
USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class User:
    """One caller. `name` is None for the shared identity of a server without `--multi-user`
    (everyone is the operator there, as in A1111). `admin`: may see and cancel every job and change
    global settings."""

    name: str | None
    admin: bool

    @property
    def owner(self) -> str | None:
        """What the job queue records as the owner of this user's jobs (None: shared)."""
        return self.name

    def owns(self, owner: str | None) -> bool:
        """Whether this user may see and control a job or file of `owner`. The stand-in for an
        unknown caller (name "") owns nothing."""
        return self.admin or (owner == self.name and self.name != "")

    def label(self) -> str:
        return self.name if self.name is not None else "everyone"


SHARED_USER = User(None, True)


class AccountError(ValueError):
    """A flag combination that cannot give every user their own space; says which flag to fix."""


@dataclass(frozen=True)
class Accounts:
    """The users the flags define and whether they are kept apart (see the module docstring)."""

    multi_user: bool = False
    names: tuple[str, ...] = ()
    admins: frozenset[str] = frozenset()

    @classmethod
    def from_args(cls, args: argparse.Namespace, user_names: Iterable[str] = ()) -> Accounts:
        """`user_names`: every name of the auth flags (modules.api.auth.AuthPolicy.user_names)."""
        names = tuple(dict.fromkeys(user_names))
        admins = frozenset(parse_admin_users(getattr(args, "admin_users", None)))
        if not getattr(args, "multi_user", False):
            if admins:
                raise AccountError("--admin-users names operators of a server shared with --multi-user; add "
                                   "--multi-user (without it every user may already change everything)")
            return cls()
        if not names:
            raise AccountError("--multi-user keeps users apart by their login: give each one a user:password pair "
                               "with --gradio-auth, --gradio-auth-path or --api-auth")
        for name in names:
            if name.lower() in RESERVED_USER_NAMES:
                raise AccountError(f"--multi-user: the user name {name!r} is the name of a shared output folder; "
                                   "pick another name for this user")
            if not USER_NAME_PATTERN.fullmatch(name):
                raise AccountError(f"--multi-user: the user name {name!r} cannot be a folder name under outputs/; "
                                   "use letters, digits, '.', '_' or '-' (not starting with '.', at most 64)")
        unknown = sorted(admins - set(names))
        if unknown:
            raise AccountError(f"--admin-users names {', '.join(map(repr, unknown))}, not a user of --gradio-auth, "
                               f"--gradio-auth-path or --api-auth (users: {', '.join(names)})")
        return cls(True, names, admins)

    def user(self, name: str | None) -> User:
        """The `User` for an authenticated name (None: no credentials were needed or given)."""
        if not self.multi_user:
            return SHARED_USER
        if name is None or name not in self.names:
            # Only reachable when a route is open, which --multi-user never leaves: deny everything.
            return User("", False)
        return User(name, name in self.admins)

    def user_of_scope(self, scope: Mapping) -> User:
        state = scope.get("state") or {}
        return self.user(state.get(USER_STATE_KEY) if isinstance(state, Mapping) else None)


def parse_admin_users(text: str | None) -> list[str]:
    if not text:
        return []
    return [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]


def scope_of(request) -> Mapping:
    """The ASGI scope of a Starlette `Request` or a Gradio `gr.Request` (which wraps one); {} when
    there is none (a handler called directly, in tests)."""
    inner = getattr(request, "__dict__", {}).get("request") if request is not None else None
    for candidate in (inner, request):
        scope = getattr(candidate, "scope", None) if candidate is not None else None
        if isinstance(scope, Mapping):
            return scope
    return {}


def user_of(accounts: Accounts | None, request) -> User:
    """The user behind a Starlette or Gradio request (`SHARED_USER` without `--multi-user`)."""
    if accounts is None or not accounts.multi_user:
        return SHARED_USER
    return accounts.user_of_scope(scope_of(request))


def is_multi_user(context) -> bool:
    """Whether `context`'s server keeps users apart (False for a context without accounts: a test's stand-in)."""
    accounts = getattr(context, "accounts", None)
    return accounts is not None and accounts.multi_user


def caller(context, request) -> User:
    """The user behind a Starlette or Gradio `request` on `context`'s server (`SHARED_USER` without
    --multi-user, and for a context without accounts)."""
    return user_of(getattr(context, "accounts", None), request)


def ordinal(number: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
