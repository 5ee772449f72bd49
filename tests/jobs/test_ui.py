"""The MLflow UI started by ``wmplan ui`` shows a recorded run in a real (headless) browser."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.jobs.servers import free_ports, wait_http
from wmplan.jobs.experiment import load_config
from wmplan.jobs.runner import run_experiment
from wmplan.storage.mlflow import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, runs_page_url

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAST = ["planners.grasp.iterations=20", "planners.cem.iterations=2", "planners.cem.samples=16", "planners.cem.elites=4"]
TIMEOUT_MS = 120_000
VIEWPORT = {"width": 1400, "height": 1000}


def stop(proc: subprocess.Popen) -> None:
    """End ``wmplan ui`` and the ``mlflow ui`` server it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    try:  # the server's workers, should any outlive their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store, its tables made before two processes open it: its URI."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture
def ui_process(store, tmp_path):
    """``python -m wmplan ui`` on a free port for ``store``, run from ``tmp_path``: (process, base URL, log).

    Not yet waited for: the server starts (some seconds) while the experiment runs.
    """
    (port,) = free_ports(1)
    log = tmp_path / "ui.log"
    # MLflow's GenAI job runner (a job process and seven huey consumers) is no part of viewing runs and
    # slows the server's start several seconds on two cores.
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wmplan", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        stop(proc)


@pytest.fixture
def recorded_run(ui_process, store, ray_cluster, tiny_wall_model, tmp_path):
    """A small cem + grasp run recorded in ``store``: (parent run, {planner: child run}, Parquet part paths)."""
    ckpt, data = tiny_wall_model
    config = load_config(None, [f"model={ckpt}", f"data={data}", f"output={tmp_path / 'runs'}", "planners=cem,grasp",
                                "horizons=2", "episodes=4", "batch_size=2", "actors=2", *FAST])
    run_experiment(config, run_id="ui-run", say=lambda m: None)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("wmplan")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["wmplan.planner"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    parts = [f.path for f in client.list_artifacts(parent.info.run_id, "results/episodes")]
    return parent, children, parts


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (install Debian's chromium: scripts/setup.sh does as root)")
def test_the_ui_shows_metrics_plots_and_parquet_parts(recorded_run, ui_process, store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

    parent, children, parts = recorded_run
    proc, url, log = ui_process
    wait_http(f"{url}/health", seconds=300.0, proc=proc, log=log)
    grasp = children["grasp"]
    experiment_id = parent.info.experiment_id
    success_rate = grasp.data.metrics["success_rate"]
    assert parts, "the parent run has no Parquet parts under results/episodes"
    part = parts[0]
    base = f"{url}/#/experiments/{experiment_id}/runs"
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=store).get_experiment(experiment_id).tags
    assert tags.get(TAG_EXPERIMENT_KIND) == EXPERIMENT_KIND

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)  # one context: the pages share the UI's cached scripts
            # (0) As a person: the experiment's page shows its runs table (not MLflow's GenAI overview),
            # the run's name leads to the run, its Artifacts tab to the success table and the plots.
            page = context.new_page()
            page.goto(runs_page_url(base_url=url, experiment_id=experiment_id), wait_until="load")
            try:
                expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
                expect(page.get_by_role("heading", name="Overview", exact=True)).to_have_count(0)
                run_link = page.get_by_role("link", name=parent.info.run_name, exact=True)
                expect(run_link).to_be_visible(timeout=TIMEOUT_MS)
                page.screenshot(path=str(tmp_path / "person-runs.png"), full_page=True)
                run_link.click()
                page.wait_for_url(f"**/runs/{parent.info.run_id}**", timeout=TIMEOUT_MS)
                expect(page.get_by_role("heading", name=parent.info.run_name, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
                page.get_by_role("tab", name="Artifacts", exact=True).click()

                page.get_by_text("preview", exact=True).first.click()  # the folder, then its table
                page.get_by_text("episodes.json", exact=True).first.click()
                table = page.get_by_role("table")
                for column in ("planner", "horizon", "success", "planning_time_s"):  # a header holds its name's button
                    header = table.get_by_role("columnheader").filter(has=page.get_by_role("button", name=column, exact=True))
                    expect(header).to_have_count(1, timeout=TIMEOUT_MS)
                for planner in ("cem", "grasp"):
                    expect(table.get_by_role("cell", name=planner, exact=True)).to_have_count(4, timeout=TIMEOUT_MS)
                expect(table.get_by_role("row")).to_have_count(1 + 8, timeout=TIMEOUT_MS)  # the header, 2 planners x 4 episodes
                page.screenshot(path=str(tmp_path / "person-table.png"), full_page=True)

                page.get_by_text("plots", exact=True).first.click()
                page.get_by_text("success_vs_horizon.png", exact=True).first.click()
                expect(page.get_by_role("img", name="plots/success_vs_horizon.png")).to_be_visible(timeout=TIMEOUT_MS)
                page.wait_for_function("""() => [...document.images].some(
                    img => img.alt === "plots/success_vs_horizon.png" && img.complete && img.naturalWidth > 0)""",
                                       timeout=TIMEOUT_MS)
            finally:
                page.screenshot(path=str(tmp_path / "person-plot.png"), full_page=True)

            # (a) The GRASP child run's overview lists the metric success_rate with its value.
            page = context.new_page()
            page.goto(f"{base}/{grasp.info.run_id}", wait_until="load")
            try:
                for name, value in [("success_rate", success_rate), ("episodes", 4.0)]:
                    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
                    expect(row).to_be_visible(timeout=TIMEOUT_MS)
                    cells = row.get_by_role("cell")
                    expect(cells).to_have_count(2, timeout=TIMEOUT_MS)
                    shown = cells.nth(1).inner_text().strip()
                    assert float(shown) == pytest.approx(value, rel=1e-3, abs=1e-3), f"{name} shows {shown!r}, logged {value}"
            finally:
                page.screenshot(path=str(tmp_path / "child-metrics.png"), full_page=True)

            # (b) The parent's success-vs-horizon plot is displayed as an image. Each view gets a
            # page of its own: the artifact browser reads the path in the URL only when it mounts.
            page = context.new_page()
            page.goto(f"{base}/{parent.info.run_id}/artifacts/plots/success_vs_horizon.png", wait_until="load")
            try:
                expect(page.get_by_role("img", name="plots/success_vs_horizon.png")).to_be_visible(timeout=TIMEOUT_MS)
                page.wait_for_function("""() => [...document.images].some(
                    img => img.alt === "plots/success_vs_horizon.png" && img.complete && img.naturalWidth > 0)""",
                                       timeout=TIMEOUT_MS)
            finally:
                page.screenshot(path=str(tmp_path / "parent-plot.png"), full_page=True)

            # (c) Opening a Parquet part of the results unfolds the parent's artifact tree down to it:
            # the header names the file and the tree lists every part of results/episodes.
            page = context.new_page()
            page.goto(f"{base}/{parent.info.run_id}/artifacts/{part}", wait_until="load")
            try:
                expect(page.get_by_text(part, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
                for each in parts:
                    expect(page.get_by_text(Path(each).name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
            finally:
                page.screenshot(path=str(tmp_path / "parent-parquet.png"), full_page=True)
        finally:
            browser.close()
