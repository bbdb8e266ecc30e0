"""The `edgefleet` command: every subcommand documents itself, unknown ones fail clearly."""

import subprocess
import sys

import pytest

from edgefleet import cli


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_top_level_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for name in [*cli._DELEGATED, *cli._OPERATOR]:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("command", ["demo", "server", "agent", "compress", "keygen", "token", "upload",
                                     "deploy", "status"])
def test_subcommand_help(command):
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_unknown_command_is_an_error():
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_keygen_writes_a_key_pair_and_refuses_to_overwrite(tmp_path):
    key = tmp_path / "publisher.key"
    assert _run("keygen", "--out", str(key)).returncode == 0
    assert len((tmp_path / "publisher.pub").read_bytes()) == 32
    assert key.stat().st_mode & 0o077 == 0
    again = _run("keygen", "--out", str(key))
    assert again.returncode != 0 and "refusing" in again.stderr


def test_operator_command_without_token_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("EDGEFLEET_OPERATOR_TOKEN", raising=False)
    result = _run("status", "--server", "127.0.0.1:1")
    assert result.returncode != 0
    assert "operator token" in result.stderr


def test_deploy_offers_rollback_on_failure_and_on_timeout():
    result = _run("deploy", "--help")
    assert result.returncode == 0 and "--rollback-on-failure" in result.stdout
    assert "--rollback-on-timeout" in result.stdout
    assert "--max-in-flight" in result.stdout
