"""Tokens people type after --token never start with "-" (argparse would read an option)."""

from __future__ import annotations

import secrets

from server.tokens import new_token


def test_new_token_redraws_a_leading_dash(monkeypatch):
    draws = iter(["-abc", "--x", "ok-token"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(draws))
    assert new_token(24) == "ok-token"


def test_many_real_tokens_are_cli_safe_and_distinct():
    tokens = [new_token(24) for _ in range(2000)]     # ~31 would start with "-" unfiltered
    assert not any(t.startswith("-") for t in tokens)
    assert len(set(tokens)) == len(tokens) and all(len(t) == 32 for t in tokens)
