"""Random bearer tokens that people paste into command lines."""

from __future__ import annotations

import secrets


def new_token(nbytes: int) -> str:
    """A URL-safe random token of `nbytes` random bytes that does not start with "-".

    Tokens are typed after `--token` (agent enrollment, operator CLI); argparse takes a value
    that starts with "-" for an option and fails with "expected one argument", which one
    token_urlsafe() value in 64 would do. Redrawing those loses less than 0.03 bits."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token
