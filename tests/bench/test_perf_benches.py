"""The performance benchmarks still run end to end (tiny model, short windows): they report
every phase and ratio, and every answer they received was checked. Their figures are not
asserted: speed is measured by running them, not by tests."""

from __future__ import annotations

import json


def test_serve_speed_runs_every_phase_over_http_and_in_process(tmp_path):
    from bench import serve_speed

    code = serve_speed.main([
        "--model", "clipfit-tiny", "--clients", "4", "--big-clients", "2", "--big-batch", "8",
        "--max-batch", "8", "--warmup", "0.2", "--seconds", "1", "--big-seconds", "1",
        "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "serve_speed.json").read_text())
    for phase in ("b", "c", "d", "e", "e0"):
        for path in ("http", "in_process"):
            row = result[phase][path]
            assert row["images"] > 0 and row["images_per_s"] > 0, (phase, path)
    assert result["d"]["http"]["mean_batch"] == 1.0  # the path before batching
    assert set(result["ratios"]["http"]) == {"c/a", "c/b", "c/d", "e/e0"}
    assert result["a"]["images_per_s"] > 0


def test_train_cost_compares_the_two_methods(tmp_path):
    from bench import train_cost

    assert train_cost.main(["--model", "clipfit-tiny", "--batch-size", "4", "--steps", "2",
                            "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train_cost.json").read_text())
    assert result["clipfit"]["trained_numbers"] == result["clipfit"]["clipfit_numbers"]
    assert result["full"]["trained_numbers"] > 100 * result["clipfit"]["trained_numbers"]
    assert result["clipfit"]["peak_mib"] > 0 and result["time_ratio"] > 0


def test_hostile_zips_measures_every_refusal(capsys):
    from bench import hostile_zips

    assert hostile_zips.main(["--bomb-mb", "25", "--classes", "1001"]) == 0  # each one a 422
    lines = capsys.readouterr().out.splitlines()
    assert sum("peak memory +" in line for line in lines) == 8
    assert any("zip of 1001 classes" in line and "refused in" in line for line in lines)
