"""`edgefleet agent` flags: the TLS options default to $EDGEFLEET_TLS_CA, $EDGEFLEET_TLS_CLIENT_CERT
and $EDGEFLEET_TLS_CLIENT_KEY (what a systemd EnvironmentFile sets), and a flag wins over its
variable. The end-to-end run with the environment alone is in tests/server/test_mtls.py."""

from __future__ import annotations

import pytest

from agent.main import TLS_ENVIRONMENT, build_parser, config_from_args, main

ENV = {"EDGEFLEET_TLS_CA": "/etc/env/ca.pem", "EDGEFLEET_TLS_CLIENT_CERT": "/etc/env/device.pem",
       "EDGEFLEET_TLS_CLIENT_KEY": "/etc/env/device.key"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def tls_of(argv: list[str]) -> tuple:
    config = config_from_args(build_parser().parse_args(argv))
    return config.tls_ca, config.tls_cert, config.tls_key


def test_the_variables_are_the_operator_commands_client_names():
    assert set(TLS_ENVIRONMENT.values()) == set(ENV)


def test_without_flags_or_variables_the_agent_speaks_plaintext():
    assert tls_of([]) == (None, None, None)


def test_tls_settings_come_from_the_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert tls_of([]) == ("/etc/env/ca.pem", "/etc/env/device.pem", "/etc/env/device.key")


def test_flags_win_over_the_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert tls_of(["--tls-ca", "/flag/ca.pem"]) == ("/flag/ca.pem", "/etc/env/device.pem", "/etc/env/device.key")
    assert tls_of(["--tls-ca", "/flag/ca.pem", "--tls-cert", "/flag/d.pem", "--tls-key", "/flag/d.key"]) == \
        ("/flag/ca.pem", "/flag/d.pem", "/flag/d.key")


def test_one_way_tls_from_the_environment_alone(monkeypatch):
    monkeypatch.setenv("EDGEFLEET_TLS_CA", "/etc/env/ca.pem")
    assert tls_of([]) == ("/etc/env/ca.pem", None, None)


def test_an_empty_variable_counts_as_unset(monkeypatch):
    # `EDGEFLEET_TLS_CLIENT_CERT=` in an EnvironmentFile: not a certificate named "".
    for name in ENV:
        monkeypatch.setenv(name, "")
    assert tls_of([]) == (None, None, None)


def test_a_bad_combination_from_the_environment_says_where_the_values_came_from(monkeypatch, capsys):
    # A client certificate but no CA: refused before anything starts, naming the variables used.
    monkeypatch.setenv("EDGEFLEET_TLS_CLIENT_CERT", "/etc/env/device.pem")
    monkeypatch.setenv("EDGEFLEET_TLS_CLIENT_KEY", "/etc/env/device.key")
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", "/nonexistent"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--tls-cert/--tls-key need --tls-ca" in err
    assert "--tls-cert from $EDGEFLEET_TLS_CLIENT_CERT, --tls-key from $EDGEFLEET_TLS_CLIENT_KEY" in err

    # Only the certificate set: both-or-neither, and the one variable named.
    monkeypatch.delenv("EDGEFLEET_TLS_CLIENT_KEY")
    monkeypatch.setenv("EDGEFLEET_TLS_CA", "/etc/env/ca.pem")
    with pytest.raises(SystemExit):
        main(["--data-dir", "/nonexistent"])
    err = capsys.readouterr().err
    assert "both --tls-cert and --tls-key" in err and "$EDGEFLEET_TLS_CLIENT_KEY" not in err
    assert "--tls-cert from $EDGEFLEET_TLS_CLIENT_CERT" in err


def test_a_bad_combination_from_flags_does_not_blame_the_environment(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", "/nonexistent", "--tls-cert", "/flag/d.pem", "--tls-key", "/flag/d.key"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--tls-cert/--tls-key need --tls-ca" in err and "$EDGEFLEET" not in err
