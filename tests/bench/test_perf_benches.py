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


def test_batch_predict_measures_the_job_the_limit_and_a_killed_worker(tmp_path):
    from bench import batch_predict

    assert batch_predict.main([
        "--model", "clipfit-tiny", "--images", "160", "--batch", "1", "--chunk", "8",
        "--raw-seconds", "0.3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "batch_predict.json").read_text())
    assert result["a"]["images_per_s"] > 0 and result["b"]["images"] == 160
    assert result["ratio"] == result["rounds"][0]["ratio"] > 0
    killed = result["c"]
    assert killed["attempt"] == 2 and killed["classified_when_killed"] >= 80
    assert killed["classified_twice"] == \
        killed["classified_when_killed"] - killed["recorded_when_killed"]
    assert 0 <= killed["classified_twice"] <= 8  # at most the chunk in flight
    assert killed["images_in_second_attempt"] == 160 - killed["recorded_when_killed"]
