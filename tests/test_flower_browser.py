"""Flower in a real browser: a worker and `dox flower` run, one document goes through,
then Debian's headless Chromium logs in and sees the worker and the workflow's five steps.

Needs chromium and chromium-driver (Debian: /usr/bin/chromium, /usr/bin/chromedriver)
and the selenium package; without them the test skips (and fails with CI=true).
The screenshot of the tasks page goes to the test's temporary folder; with
DOX_UPDATE_SCREENSHOTS=1 it also replaces docs/flower.png (so a test run leaves the
working tree clean).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pdfs
import pytest
from services import (
    ROOT,
    basic_auth,
    dox,
    free_port,
    http_get,
    kill_group,
    server_env,
    spawn_dox,
    unavailable,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEPS = ["dox.validate", "dox.scan", "dox.store", "dox.recognize", "dox.publish"]
QUEUES = "validation,scan,storage,recognition,events"
USER, PASSWORD = "ops", "br0wser-pw"
SCREENSHOT = ROOT / "docs" / "flower.png"


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    return http_get(url, auth, timeout=5)


def tail(*logs: Path) -> str:
    """The end of each process log, for an assertion message."""
    parts = []
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {log.name} ---\n{text[-3000:]}")
    return "\n".join(parts)


def wait_for(check: Any, timeout: float, what: str, logs: tuple[Path, ...], procs: list[Any]) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the process logs
    (at once if one of ``procs`` has exited)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"exited while waiting for {what}: {dead}\n{tail(*logs)}")
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{tail(*logs)}")


def chromium(profile: Path) -> Any:
    """Headless Debian Chromium through chromedriver; skip (CI: fail) when missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium", "not installed (pip install selenium)")
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(binary).exists():
            unavailable("Chromium", f"{binary} missing (Debian: apt-get install {package})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1920,1080",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # HTTP statuses, see statuses()
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


def statuses(driver: Any, url: str) -> list[int]:
    """The HTTP statuses the browser received for ``url`` since the last call (DevTools log)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["url"] == url:
                found.append(int(response["status"]))
    return found


def test_flower_shows_worker_and_workflow_steps_in_chromium(tmp_path, stack, harness_factory):
    harness_factory(stack)  # the database and tables
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker_name = f"browser-{stack.namespace}@dox-test"
    env = server_env(tmp_path, stack, DOX_FLOWER_USER=USER, DOX_FLOWER_PASSWORD=PASSWORD)
    flower_log, worker_log = tmp_path / "flower.log", tmp_path / "worker.log"
    logs = (flower_log, worker_log)
    procs: list[Any] = []
    driver = chromium(tmp_path / "chrome")  # first: skip before starting anything
    try:
        # Flower first, so it is listening to events before anything runs.
        procs.append(
            spawn_dox(
                [
                    "flower",
                    f"--port={port}",
                    "--address=127.0.0.1",
                    # the args column carries the workflow id (step tasks: workflow_id, step, hash)
                    "--tasks_columns=name,uuid,state,args,received,runtime,worker",
                ],
                env,
                flower_log,
            )
        )
        status = wait_for(lambda: get(f"{base}/api/workers")[0], 30, "Flower to listen", logs, procs)
        assert status == 401, tail(*logs)
        assert get(f"{base}/api/tasks")[0] == 401
        assert get(f"{base}/api/workers", (USER, "wrong"))[0] == 401
        assert get(f"{base}/api/tasks", (USER, "wrong"))[0] == 401
        assert get(f"{base}/api/workers", (USER, PASSWORD))[0] == 200

        procs.append(
            spawn_dox(
                ["worker", "-Q", QUEUES, "-E", "-c", "1", "-n", worker_name, "--without-mingle"],
                env,
                worker_log,
            )
        )

        def worker_seen() -> bool:
            code, body = get(f"{base}/workers?json=1", (USER, PASSWORD))
            return code == 200 and any(w.get("hostname") == worker_name for w in json.loads(body)["data"])

        wait_for(worker_seen, 45, f"Flower to see worker {worker_name}", logs, procs)

        doc = tmp_path / "invoice.pdf"
        doc.write_bytes(
            pdfs.fpdf_document(
                ["INVOICE", "Invoice Number: INV-FLOWER-1", "Total Due: EUR 42.00", "VAT: 7.00"]
            )
        )
        submitted = dox(["submit", str(doc), "--wait", "--json", "--timeout", "60"], env, tmp_path)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr + tail(*logs)
        result = json.loads(submitted.stdout.strip().splitlines()[-1])
        wid = result["workflow_id"]
        assert result["status"] == "success", result

        # Flower's own record of the five steps (task-succeeded events) before the browser looks.
        def steps_done() -> dict[str, Any] | None:
            query = urllib.parse.urlencode({"search": f"args:{wid}"})
            code, body = get(f"{base}/api/tasks?{query}", (USER, PASSWORD))
            tasks = json.loads(body) if code == 200 else {}
            done = {t["name"]: t for t in tasks.values() if t.get("state") == "SUCCESS"}
            return done if sorted(done) == sorted(STEPS) else None

        api_tasks = wait_for(steps_done, 30, f"Flower to record the five steps of {wid}", logs, procs)
        assert {t["worker"] for t in api_tasks.values()} == {worker_name}

        check_in_browser(driver, base, wid, worker_name, logs, tmp_path)
    finally:
        driver.quit()
        for proc in reversed(procs):
            kill_group(proc)
    assert PASSWORD not in flower_log.read_text()


def check_in_browser(
    driver: Any, base: str, wid: str, worker_name: str, logs: tuple[Path, ...], shot_dir: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Without credentials the browser gets Flower's 401, not the page.
    driver.get(f"{base}/workers")
    assert statuses(driver, f"{base}/workers") == [401], tail(*logs)
    assert "Workers" not in driver.title and worker_name not in driver.page_source

    # Log in: basic auth on every request the page makes (the tables load over XHR).
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic_auth(USER, PASSWORD)}}
    )

    driver.get(f"{base}/workers")
    assert statuses(driver, f"{base}/workers") == [200], tail(*logs)
    wait = WebDriverWait(driver, 30, poll_frequency=0.2)

    def worker_row(d: Any) -> Any:
        # the name is drawn as a link split in two spans (prefix, last 12 characters)
        for link in d.find_elements(By.CSS_SELECTOR, "#workers-table tbody a.worker-name-link"):
            if link.get_attribute("textContent") == worker_name and link.is_displayed():
                return link.find_element(By.XPATH, "./ancestor::tr")
        return None

    try:
        row = wait.until(worker_row)
        assert "Online" in row.text, row.text
    except Exception as exc:
        raise AssertionError(
            f"worker {worker_name} not listed on /workers:\n{driver.page_source[-3000:]}\n{tail(*logs)}"
        ) from exc

    driver.get(f"{base}/tasks")
    search = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[type=search]")))
    search.clear()
    search.send_keys(f"args:{wid}")

    def five_rows(d: Any) -> list[list[str]] | None:
        # the table was drawn from a request carrying the search (DataTables waits 300 ms)
        asked = d.execute_script(
            "var p = $('#tasks-table').DataTable().ajax.params(); return p && p.search.value"
        )
        if asked != f"args:{wid}" or d.find_element(By.ID, "tasks-table_processing").is_displayed():
            return None
        rows = [
            [cell.get_attribute("textContent").strip() for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in d.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")
        ]
        rows = [r for r in rows if len(r) > 1]  # not the "no tasks" placeholder row
        return rows if len(rows) == 5 and all(wid in " ".join(r) for r in rows) else None

    try:
        rows = wait.until(five_rows)
    except Exception as exc:
        raise AssertionError(
            f"/tasks did not show the five steps of {wid}:\n{driver.page_source[-3000:]}\n{tail(*logs)}"
        ) from exc
    headers = driver.execute_script("return $('#tasks-table').DataTable().columns().dataSrc().toArray()")
    table = [dict(zip(headers, r, strict=False)) for r in rows]
    assert sorted(r["name"] for r in table) == sorted(STEPS), table
    for r in table:
        assert (r["state"], r["worker"]) == ("SUCCESS", worker_name) and wid in r["args"], r

    shot = shot_dir / "flower.png"
    assert driver.save_screenshot(str(shot))
    if os.environ.get("DOX_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, SCREENSHOT)
