"""The collection as a person sees it: JupyterLab in a real browser (Debian's Chromium driven by Playwright).

JupyterLab starts headless on 127.0.0.1 with a token, opens the quickstart notebook and runs every cell in fast
mode; the figures must render, the ipywidgets explorer must be a live widget (not "Loading widget..." or a
text repr) whose output changes when a control changes, and no cell may raise. Then an HTML report written by
``tools/run_notebooks.py`` opens with its images loaded and no broken link. Screenshots go to
``reports/browser/`` for a person to look at. The server is stopped at the end, also on failure.

Chromium comes from Debian (``.ci/run`` installs it when missing); Playwright's own browser download is not
used. Locally, the test is skipped when Chromium is absent; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.notebook


def _need_browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing in CI: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on the repository, fast mode, figures to a temporary folder; always stopped."""
    _need_browser()
    port, token = _free_port(), secrets.token_hex(16)
    tmp = tmp_path_factory.mktemp("lab")
    # user settings: render every cell (no virtual scrolling, so the page holds all outputs), no news popup, and
    # no autosave (the notebook under test is the repository's own file)
    settings = tmp / "settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    (settings / "@jupyterlab" / "docmanager-extension").mkdir(parents=True)  # never save outputs into the repo
    (settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    env = dict(os.environ, EMOLENS_FAST="1", EMOLENS_FIGURES=str(tmp / "figures"), JUPYTER_RUNTIME_DIR=str(tmp),
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTERLAB_SETTINGS_DIR=str(settings))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}", "--ServerApp.allow_root=True",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"]
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(tmp / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not answer within 60 s")
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_quickstart_runs_in_jupyterlab_with_live_widgets(lab, browser, tmp_path):
    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{url}/lab/tree/notebooks/00_quickstart.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=120_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # every code cell has an execution count once the run is over (read from the notebook model)
        page.wait_for_function(
            """() => { const nb = window.jupyterapp.shell.currentWidget.content;
                       const code = nb.widgets.filter(c => c.model.type === 'code');
                       return code.length > 0 && code.every(c => c.model.executionCount !== null); }""",
            timeout=600_000, polling=1000)
        page.screenshot(path=str(SHOTS / "quickstart_run.png"), full_page=False)
        failed = page.evaluate(
            """() => window.jupyterapp.shell.currentWidget.content.widgets
                  .filter(c => c.model.type === 'code')
                  .flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                  .map(o => o.ename + ': ' + o.evalue))""")
        assert not failed, f"cells raised: {failed}"
        text = page.inner_text(".jp-Notebook")
        assert "Traceback" not in text, "a cell raised: see reports/browser/quickstart_run.png"
        imgs = page.eval_on_selector_all(".jp-OutputArea-output img", "els => els.map(e => e.naturalWidth)")
        assert len(imgs) >= 2 and all(w > 0 for w in imgs), f"figures did not render: {imgs}"
        # the explorer: a live widget, not a placeholder or a text repr
        widget = page.locator(".jp-OutputArea-output .widget-dropdown select").last
        widget.wait_for(timeout=60_000)
        assert "Loading widget" not in page.inner_text(".jp-Notebook")
        assert "VBox(children=" not in page.inner_text(".jp-Notebook")
        live = page.locator(".jp-OutputArea-output .widget-output").last
        before = live.inner_text()
        options = widget.evaluate("s => [...s.options].map(o => o.value)")
        widget.scroll_into_view_if_needed()
        widget.select_option(options[-1])
        page.wait_for_function("([el, b]) => el.innerText !== b", arg=[live.element_handle(), before],
                               timeout=60_000)
        after = live.inner_text()
        assert after != before and options[-1] in after
        live.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "quickstart_widget.png"), full_page=False)
        assert not errors, f"JavaScript errors on the page: {errors[:3]}"
    finally:
        page.close()


def test_html_report_opens_with_images_and_no_broken_links(browser, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    from run_notebooks import execute

    monkeypatch.setenv("EMOLENS_FAST", "1")
    monkeypatch.setenv("EMOLENS_FIGURES", str(tmp_path / "figures"))
    execute(ROOT / "notebooks" / "00_quickstart.ipynb", tmp_path / "reports", timeout=1800, quiet=True)
    report = tmp_path / "reports" / "00_quickstart.html"
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        assert imgs and all(c and w > 0 for c, w in imgs), f"images missing from the report: {imgs}"
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        for href in links:
            if href.startswith("#"):
                assert href == "#" or page.locator(f"[id='{href[1:]}']").count() > 0, f"broken anchor {href}"
            elif not re.match(r"^(https?:|mailto:)", href):
                assert (report.parent / href).exists(), f"broken link {href}"
        assert "static rendering of the initial state" in page.inner_text("body")  # the widget's offline view
        page.screenshot(path=str(SHOTS / "quickstart_report.png"), full_page=False)
    finally:
        page.close()
