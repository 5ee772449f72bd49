"""Progress lines: rate and ETA at least every interval, readable in a file, one redrawn line on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from wmplan.platform.progress import EVERY_S_ENV, Progress, StageProgress, default_every_s, format_duration

LINE = re.compile(r"^(?P<stage>[\w ]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\), (?P<rate>[\d.e+-]+) (?P=unit)/s, "
                  r"(?P<elapsed>[\d.]+ s|\d+ min \d+ s) elapsed, (?P<eta>ETA [^,]+|done|stopped)(?P<extra>, .*)?$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_whole_lines_at_most_every_interval_and_a_final_line():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(stage="training model", total=100, unit="steps", stream=out, every_s=10, heartbeat=False, clock=clock)
    for step in range(1, 101):
        clock.now += 0.35  # 35 s in all: lines at 10, 20 and 30 s, then the final one
        progress.update(1, loss=1.0 / step)
    progress.close()
    progress.close()  # idempotent
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 4, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["done"]) for m in parsed] == [29, 58, 87, 100]  # the first update at or after each 10 s
    assert [m["eta"] for m in parsed[:3]] == ["ETA 25 s", "ETA 15 s", "ETA 4.5 s"]  # 71, 42 and 13 steps left at 2.86 steps/s
    assert parsed[0]["rate"] == "2.86" and parsed[0]["elapsed"] == "10 s" and parsed[0]["extra"] == ", loss 0.03448"
    assert parsed[-1]["eta"] == "done" and parsed[-1]["elapsed"] == "35 s" and parsed[-1]["done"] == "100"


def test_a_stopped_stage_says_so_and_an_idle_start_has_no_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(stage="planning", total=50, unit="episodes", stream=out, every_s=5, heartbeat=False, clock=clock)
    assert progress.line().endswith("ETA ?")
    clock.now += 6
    progress.update(10, success="40.0%")
    clock.now += 100
    progress.close()
    first, last = out.getvalue().splitlines()
    assert first == "planning: 10/50 episodes (20%), 1.67 episodes/s, 6.0 s elapsed, ETA 24 s, success 40.0%"
    assert last.startswith("planning: 10/50 episodes (20%), 0.0943 episodes/s, 1 min 46 s elapsed, stopped")


def test_a_terminal_gets_one_redrawn_line_at_a_few_redraws_a_second():
    clock, out = FakeClock(), Terminal()
    progress = Progress(stage="data", total=1000, unit="trajectories", stream=out, every_s=10, heartbeat=False, clock=clock)
    for _ in range(1000):
        clock.now += 0.01  # 10 s of updates every 10 ms: at most 4 redraws a second
        progress.update(1)
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.rstrip().endswith("done")
    redraws = text.split("\r")[1:]
    assert 30 <= len(redraws) <= 42, len(redraws)
    assert all(LINE.match(r.rstrip()) for r in redraws)


def test_a_say_callback_gets_lines_even_on_a_terminal_stream():
    clock, said = FakeClock(), []
    progress = Progress(stage="MLflow upload", total=3, unit="groups", stream=Terminal(), say=said.append, every_s=1,
                        heartbeat=False, clock=clock)
    for name in ("cem", "gd", "grasp"):
        clock.now += 2
        progress.update(1, last=f"{name} H=5")
    progress.close()
    assert said == [
        "MLflow upload: 1/3 groups (33%), 0.5 groups/s, 2.0 s elapsed, ETA 4.0 s, last cem H=5",
        "MLflow upload: 2/3 groups (66%), 0.5 groups/s, 4.0 s elapsed, ETA 2.0 s, last gd H=5",
        "MLflow upload: 3/3 groups (100%), 0.5 groups/s, 6.0 s elapsed, done, last grasp H=5",
    ]


def test_the_heartbeat_writes_lines_while_no_update_comes():
    out = io.StringIO()
    progress = Progress(stage="planning", total=10, unit="episodes", stream=out, every_s=0.2)
    deadline = time.monotonic() + 120  # a busy machine may be slow to schedule the thread: wait, do not fail
    while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("planning: 0/10 episodes (0%), 0 episodes/s, ") and lines[0].endswith("ETA ?")
    assert lines[-1].endswith("stopped") and "\r" not in out.getvalue()
    assert not progress._thread.is_alive()


def test_stage_progress_closes_each_training_stage_with_its_last_step():
    said = []
    stages = StageProgress(say=said.append, every_s=3600, heartbeat=False)
    for stage, total in (("encoder", 4), ("probe", 2), ("predictor", 3)):
        for step in range(1, total + 1):
            stages(stage, step, total, 0.5)
    stages.close()
    assert [s.split(",")[0] for s in said] == [
        "training encoder: 4/4 steps (100%)", "training probe: 2/2 steps (100%)", "training predictor: 3/3 steps (100%)"]
    assert all(", done, loss 0.5" in s for s in said)
    stages("model", 1, 10, 0.1)
    stages.close()  # a stage cut short still ends with a line
    assert said[-1].startswith("training model: 1/10 steps (10%)") and ", stopped, " in said[-1]


def test_interval_from_the_environment_and_durations(monkeypatch):
    monkeypatch.setenv(EVERY_S_ENV, "2.5")
    assert default_every_s() == 2.5
    for bad in ("x", "-1", "inf"):
        monkeypatch.setenv(EVERY_S_ENV, bad)
        assert default_every_s() == 10.0
    monkeypatch.delenv(EVERY_S_ENV)
    assert default_every_s() == 10.0
    assert [format_duration(s) for s in (3.21, 42.4, 134, 3900, float("nan"))] == ["3.2 s", "42 s", "2 min 14 s", "1 h 05 min", "?"]


@pytest.mark.parametrize("every", ["0", "3600"])
@pytest.mark.integration  # a subprocess of its own, or processes
def test_wmplan_data_writes_progress_lines_to_a_file(tmp_path, every):
    """What a user sees with ``wmplan data ... > log 2>&1``: whole lines, no carriage returns."""
    env = {**os.environ, EVERY_S_ENV: every}  # 0: a line per chunk of 16 trajectories; 3600: only the last
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "wmplan", "data", "--env", "wall", "--episodes", "40", "--steps", "10",
                               "--workers", "1", "--out", str(tmp_path / "d.parquet")],
                              stdout=f, stderr=subprocess.STDOUT, env=env, timeout=900)  # seconds when idle
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and text.endswith("\n")
    progress = [LINE.match(line) for line in text.splitlines() if line.startswith("data:")]
    assert all(progress), text
    assert [int(m["done"]) for m in progress] == ([16, 32, 40] if every == "0" else [40])
    assert progress[-1]["eta"] == "done" and all(m["total"] == "40" and m["unit"] == "trajectories" for m in progress)
    assert text.splitlines()[-1].startswith(f"wrote {tmp_path / 'd.parquet'}: 40 trajectories")
