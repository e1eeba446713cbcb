"""bench.replicas' pure parts: its arguments, the answer and staleness checkers, and the
HAProxy configuration it derives from deploy/haproxy.cfg. The benchmark itself starts ten
processes and runs for minutes: it is run by hand (docs/operations.md), not here."""

from __future__ import annotations

import subprocess

import pytest

from bench.replicas import (
    Change,
    Probe,
    haproxy_config,
    parse_args,
    percentile,
    stale_probes,
    status_problem,
)
from tests.debian import debian_binary


def test_arguments_have_defaults_and_refuse_nonsense(capsys):
    args = parse_args([])
    assert (args.adapters, args.blob, args.jobs) == (32, "s3", 4)
    assert parse_args(["--blob", "fs", "--chaos-seconds", "5"]).chaos_seconds == 5.0
    for bad in (["--jobs", "0"], ["--adapters", "2"], ["--blob", "nfs"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "--adapters must be at least 4" in capsys.readouterr().err


def test_an_answer_keeps_the_contract_only_as_2xx_expected_4xx_or_503_with_retry_after():
    assert status_problem(200, {}) is None and status_problem(204, {}) is None
    assert status_problem(404, {}) is None and status_problem(401, {}) is None
    assert status_problem(503, {"Retry-After": "1"}) is None
    assert status_problem(503, {}) == "503 without Retry-After"
    assert status_problem(502, {"Retry-After": "1"}) == "status 502"
    assert status_problem(500, {}) == "status 500"
    assert status_problem(422, {}) == "status 422"


def test_a_probe_is_stale_only_past_the_bound_with_the_old_answer():
    bound = 1.0
    changes = [Change("key", "k1", 10.0), Change("adapter", "a1", 10.0),
               Change("alias", "n@live", 10.0, "v2"), Change("alias", "n@live", 20.0, "v3")]
    probes = [
        Probe("key", "k1", 10.5, 200),  # within the bound: allowed
        Probe("key", "k1", 11.5, 200),  # stale
        Probe("key", "k1", 11.5, 401),
        Probe("adapter", "a1", 12.0, 200),  # stale
        Probe("adapter", "a1", 12.0, 404),
        Probe("alias", "n@live", 9.0, 200, "v1"),  # before any change
        Probe("alias", "n@live", 12.0, 200, "v1"),  # stale: moved to v2
        Probe("alias", "n@live", 12.0, 200, "v2"),
        Probe("alias", "n@live", 20.5, 200, "v2"),  # within the second move's bound
        Probe("alias", "n@live", 19.9, 200, "v3"),  # the later move seen early: fine
        Probe("alias", "n@live", 22.0, 200, "v2"),  # stale: moved to v3
        Probe("key", "other", 50.0, 200),  # no change to it
    ]
    stale = stale_probes(changes, probes, bound)
    assert len(stale) == 4, stale
    assert [s.split(":")[0] for s in stale] == ["key k1", "adapter a1", "alias n@live",
                                                "alias n@live"]


def test_percentile_is_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_the_derived_haproxy_configuration_is_valid_and_checks_readyz(tmp_path):
    text = haproxy_config([18001, 18002], 18000, tmp_path / "admin.sock")
    assert "resolvers" not in text and "server-template" not in text
    assert "option httpchk GET /readyz" in text
    assert "server api1 127.0.0.1:18001 check" in text
    assert "server api2_b 127.0.0.1:18002 backup" in text
    assert "    option allbackups" in text.split("backend api", 1)[1]
    assert "bind 127.0.0.1:18000" in text
    binary = debian_binary("haproxy", "haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
