"""The capture latency benchmark runs end to end (clipfit-tiny, one short round): every mode is
measured, and the captures it reports were really stored, in the capture-all mode only. Its
timings are not asserted: speed is measured by running it, not by tests."""

from __future__ import annotations

import json

from bench import capture_latency


def test_capture_latency_measures_every_mode_and_stores_only_the_captured(tmp_path):
    code = capture_latency.main([
        "--model", "clipfit-tiny", "--clients", "2", "--warmup", "0.2", "--seconds", "0.5",
        "--rounds", "1", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "capture_latency.json").read_text())
    for mode in ("off", "all", "none", "control"):
        [row] = result["modes"][mode]["rounds"]
        assert row["requests"] > 0 and row["requests_per_s"] > 0, mode
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"], mode
        assert result["modes"][mode]["pooled"]["requests"] == row["requests"], mode
        assert row["server_cpu_ms_per_request"] > 0, mode
    for mode in ("all", "none", "control"):
        assert set(result["ratios"][mode]["pooled"]) == {"p50", "p95", "p99", "requests_per_s",
                                                         "cpu_per_request"}
        assert len(result["ratios"][mode]["rounds"]) == 1
        assert result["ratios"][mode]["median_of_rounds"] == result["ratios"][mode]["rounds"][0]

    captures = result["captures"]
    # every request of the capture-all mode was answered and offered, and stored
    assert captures["offered"] >= result["modes"]["all"]["rounds"][0]["requests"] > 0
    assert captures["written"] + sum(captures["skipped"].values()) == captures["offered"]
    assert captures["in_database"]["all"] == captures["written"] > 0
    assert captures["in_database"]["none"] == 0
    assert captures["in_database"]["off"] == captures["in_database"]["control"] == 0
    assert set(captures["skipped"]) == {"cap", "quota", "queue_full", "off", "error"}
    # the writer's counters per phase: only the capture-all phase wrote anything
    assert result["modes"]["all"]["rounds"][0]["writer"]["written"] > 0
    assert result["modes"]["none"]["rounds"][0]["writer"]["written"] == 0
    assert result["modes"]["off"]["rounds"][0]["writer"]["written"] == 0
    assert result["modes"]["control"]["rounds"][0]["writer"]["written"] == 0
    assert all(result["checks"].values()), result["checks"]
