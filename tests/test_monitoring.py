"""monitoring/: Prometheus config, alert rules (with promtool's unit tests) and the dashboard.

promtool comes from Debian's ``prometheus`` package. Without it the promtool tests
skip, except with ``CI=true``, where they fail. The other checks are plain Python.
They check that every metric name used in the alerts or the dashboard exists in
dox_tasks.metrics.names, and that every metric DOX exports appears in at least one
of them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import services
import yaml

from dox_tasks.metrics import names

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "monitoring"
ALERTS = yaml.safe_load((MON / "alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((MON / "prometheus.yml").read_text())
DASHBOARD = json.loads((MON / "grafana" / "dashboards" / "dox.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

#: The runbooks' alerts, plus the exporter's and the workers' own scrape health.
EXPECTED_ALERTS = {
    "DoxSuccessRateLow",
    "DoxErrorRateHigh",
    "DoxWorkflowSlow",
    "DoxScheduledJobFailed",
    "DoxNoWorkers",
    "DoxQueueWithoutConsumer",
    "DoxScanSlow",
    "DoxWorkerMetricsDown",
    "DoxExporterDown",
    "DoxDatabaseDown",
    "DoxBrokerDown",
    "DoxApiKeysRefused",
    "DoxBackupStale",
    "DoxSyncMissed",
    "DoxRateLimitNearlyUsed",
}


def rules() -> list[dict[str, Any]]:
    (group,) = ALERTS["groups"]
    assert group["name"] == "dox"
    return list(group["rules"])


def panels(items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for p in DASHBOARD["panels"] if items is None else items:
        out.append(p)
        out += panels(p.get("panels", []))
    return out


def panel_exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    return [r["expr"] for r in rules()]


# ---- metric names in PromQL ------------------------------------------------------------

#: PromQL keywords that look like identifiers but are not followed by "(".
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
}
#: Series Prometheus makes itself, per scrape target.
BUILTIN_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (as written: _bucket kept)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals: label values, regexes
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries, incl. [$__rate_interval]
    # label lists of by/without/on/ignoring/group_left/group_right
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    found = set()
    # An identifier not glued to a digit, dot or $ (which rules out 1h, 1e3, $__interval).
    for m in re.finditer(r"(?<![\w:.$])[a-zA-Z_:][\w:]*", expr):
        if expr[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation: rate(, sum (, vector(, time(
        if m.group(0) not in PROMQL_WORDS:
            found.add(m.group(0))
    return found


def base_name(name: str) -> str:
    """workflow_duration_seconds_bucket -> workflow_duration_seconds (for known histograms)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in names.ALL:
            return name[: -len(suffix)]
    return name


def test_metric_names_finds_series_and_skips_promql():
    expr = (
        "histogram_quantile(0.95, sum by (le, step) ("
        'rate(dox_step_duration_seconds_bucket{step="scan", x=~"a|b(c)"}[$__rate_interval]))) > 5\n'
        'and on () up{job="dox-exporter"} == 0 or vector(0) '
        "unless sum without (queue) (dox_queue_depth offset 1h) > 1e3 "
        "+ (time() - dox_last_sync_success_timestamp_seconds) * 60 > bool 26 * 3600"
    )
    assert metric_names(expr) == {
        "dox_step_duration_seconds_bucket",
        "up",
        "dox_queue_depth",
        "dox_last_sync_success_timestamp_seconds",
    }
    assert base_name("dox_step_duration_seconds_bucket") == "dox_step_duration_seconds"
    assert base_name("workflow_completed_total") == "workflow_completed_total"


@pytest.mark.parametrize(
    "where, exprs", [("alerts.yml", alert_exprs), ("dox.json", panel_exprs)], ids=["alerts", "dashboard"]
)
def test_every_metric_used_is_defined(where, exprs):
    used = {base_name(n) for e in exprs() for n in metric_names(e)}
    assert used, f"no metric found in {where}"
    unknown = used - set(names.ALL) - BUILTIN_SERIES
    assert not unknown, f"{where} uses metrics that dox_tasks/metrics/names.py does not define: {unknown}"


def test_every_metric_exported_is_seen():
    seen = {base_name(n) for e in alert_exprs() + panel_exprs() for n in metric_names(e)}
    unseen = set(names.ALL) - seen
    assert not unseen, f"exported but in neither alerts.yml nor dox.json: {sorted(unseen)}"


# ---- alerts ----------------------------------------------------------------------------


def test_alerts_are_the_runbooks():
    assert all("alert" in r for r in rules()), "alerts.yml holds alerts only (no recording rules)"
    assert {r["alert"] for r in rules()} == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert_tells_the_operator_what_to_do(rule):
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["annotations"]["summary"].strip()
    description = rule["annotations"]["description"]
    assert "`dox " in description or "`docker compose " in description, description


def dox_commands_in_text() -> list[str]:
    texts = [text for r in rules() for text in r["annotations"].values()]
    texts += [p.get("description", "") for p in panels()]
    return sorted({c for t in texts for c in re.findall(r"`(dox [^`]+)`", t)})


@pytest.mark.parametrize("command", dox_commands_in_text())
def test_commands_in_annotations_exist(command):
    """Every `dox …` an alert or panel tells the operator to run parses as a DOX command."""
    import click

    from dox_tasks.cli import cli

    cmd: click.Command = cli  # every command module's commands are registered on import
    words = shlex.split(command)[1:]
    while words and isinstance(cmd, click.Group) and not words[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), words.pop(0))
        assert sub is not None, f"{command}: no such command"
        cmd = sub
    options = {o for p in cmd.params for o in p.opts}
    for word in words:
        if word.startswith("--"):
            assert word in options, f"{command}: {cmd.name} has no {word}"


#: The alerts about document workflows, and the one about scheduled runs.
DOCUMENT_ALERTS = {"DoxSuccessRateLow", "DoxErrorRateHigh", "DoxWorkflowSlow"}
JOB_ALERTS = {"DoxScheduledJobFailed"}
#: The values of the exporter's ``kind`` label on the workflow_* series.
KINDS = {"document", "job"}


def workflow_selectors(expr: str) -> list[str]:
    """The label matchers of every workflow_* series in a PromQL expression ("" if none)."""
    return [m.group(1) or "" for m in re.finditer(r"\bworkflow_\w+\s*(\{[^}]*\})?", expr)]


def test_workflow_selectors():
    expr = 'sum(increase(workflow_failed_total{kind="job"}[1h])) / workflow_completed_total'
    assert workflow_selectors(expr) == ['{kind="job"}', ""]


def test_workflow_alerts_select_by_kind():
    """Document alerts select kind="document", the job alert kind="job"; no rule-name lists."""
    by_name = {r["alert"]: r["expr"] for r in rules()}
    for alert in DOCUMENT_ALERTS | JOB_ALERTS:
        kind = "document" if alert in DOCUMENT_ALERTS else "job"
        selectors = workflow_selectors(by_name[alert])
        assert selectors, alert
        for selector in selectors:
            assert f'kind="{kind}"' in selector, f"{alert}: {selector or 'no selector'}"
    # Every other alert leaves the workflow_* series alone.
    for alert, expr in by_name.items():
        if alert not in DOCUMENT_ALERTS | JOB_ALERTS:
            assert not workflow_selectors(expr), alert
    for expr in alert_exprs() + panel_exprs():
        assert "rule_name!~" not in expr, expr


def test_dashboard_document_and_job_panels_select_by_kind():
    """Panels titled "documents" select kind="document"; "Scheduled job runs" kind="job"."""
    titles = set()
    for p in panels():
        title = p["title"].lower()
        kind = "document" if "documents" in title else "job" if "scheduled job runs" in title else None
        if kind is None:
            continue
        titles.add(kind)
        for t in p["targets"]:
            selectors = workflow_selectors(t["expr"])
            assert selectors, p["title"]
            for selector in selectors:
                assert f'kind="{kind}"' in selector, f"{p['title']}: {t['expr']}"
    assert titles == KINDS


def test_alert_unit_tests_label_workflow_series_with_kind():
    """The promtool inputs look like the exporter's series: every workflow_* has a kind."""
    tests = yaml.safe_load((MON / "tests" / "alerts_test.yml").read_text())
    series = [s["series"] for case in tests["tests"] for s in case.get("input_series", [])]
    workflow = [s for s in series if s.startswith("workflow_")]
    assert workflow
    kinds = [re.findall(r'\bkind="(\w+)"', s) for s in workflow]
    for s, found in zip(workflow, kinds, strict=True):
        assert len(found) == 1 and found[0] in KINDS, s
    assert {k for found in kinds for k in found} == KINDS  # both kinds are exercised


def test_kind_values_are_the_exporters():
    """The exporter gives every shipped definition a kind the alerts know about."""
    from types import SimpleNamespace

    from dox_tasks.definitions.loader import load_all
    from dox_tasks.metrics.exporter import DoxCollector, zeros
    from dox_tasks.settings import Settings

    rt = SimpleNamespace(definitions=load_all(ROOT / "workflow_defs"), settings=Settings())
    kinds = DoxCollector(rt, None)._rules()
    assert set(kinds.values()) == KINDS
    assert kinds["process_document_upload"] == "document"
    assert kinds["backup_database"] == "job"
    labelled = {
        dict(labels).get("kind") for (metric, labels) in zeros(kinds) if metric.startswith("workflow_")
    }
    assert labelled == KINDS


# ---- prometheus.yml ----------------------------------------------------------------------


def compose_worker_services() -> set[str]:
    return {
        name
        for name, svc in COMPOSE["services"].items()
        if isinstance(svc.get("command"), list) and svc["command"][:1] == ["worker"]
    }


def test_prometheus_scrapes_the_exporter_and_every_worker():
    assert PROMETHEUS["global"]["scrape_interval"] == "15s"
    assert PROMETHEUS["rule_files"] == ["alerts.yml"]  # next to prometheus.yml in the container too
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    assert set(jobs) == {"dox-exporter", "dox-workers"}
    assert jobs["dox-exporter"]["static_configs"] == [{"targets": ["exporter:9808"]}]
    (dns,) = jobs["dox-workers"]["dns_sd_configs"]
    assert dns["type"] == "A" and dns["port"] == 9809
    assert set(dns["names"]) == compose_worker_services()
    for job in jobs.values():
        assert job["basic_auth"] == {
            "username": "dox",
            "password_file": "/etc/prometheus/dox_metrics_password",
        }


def test_compose_monitoring_profile_mounts_these_files():
    monitoring = {
        name: svc for name, svc in COMPOSE["services"].items() if "monitoring" in svc.get("profiles", [])
    }
    if not monitoring:
        pytest.skip("docker-compose.yml has no monitoring profile yet")
    mounts = {v for svc in monitoring.values() for v in svc.get("volumes", []) if isinstance(v, str)}
    for mount in (
        "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml",
        "./monitoring/alerts.yml:/etc/prometheus/alerts.yml",
        "./monitoring/grafana/provisioning:/etc/grafana/provisioning",
        "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards",
    ):
        assert any(m == mount or m.startswith(mount + ":") for m in mounts), mount
    assert "/etc/prometheus/dox_metrics_password" in json.dumps(monitoring)


# ---- Grafana -------------------------------------------------------------------------------


def test_dashboard_is_provisioned_from_this_folder():
    assert DASHBOARD["uid"] == "dox-overview"
    assert DASHBOARD["schemaVersion"] >= 36
    prov = MON / "grafana" / "provisioning"
    (source,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    (provider,) = yaml.safe_load((prov / "dashboards" / "dox.yml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_panels_are_well_formed():
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels():
        g = p["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24 and not area & cells, f"panel {p['title']!r} overlaps or overflows"
        cells |= area
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "prometheus" and t["expr"].strip(), p["title"]


def test_dashboard_shows_the_seed_panels():
    titles = " | ".join(p["title"].lower() for p in panels())
    for word in (
        "active workflows",
        "success",
        "duration p50 / p95",
        "scan results",
        "rate-limit",
        "queue depth",
        "workers",
        "backup",
        "sync",
        "step duration p95",
        "scheduled job runs",
    ):
        assert word in titles, word


# ---- promtool ------------------------------------------------------------------------------


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        services.unavailable("promtool", "not installed (apt-get install prometheus)")
    return str(binary)


def run(*args: str | Path) -> None:
    res = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules():
    run("check", "rules", MON / "alerts.yml")


def test_promtool_check_config():
    # promtool does not open basic_auth.password_file (it checks only authorization
    # credentials and TLS files), so the real file is checked as it is, with no temp copy.
    # rule_files is relative, so this also loads and checks alerts.yml.
    run("check", "config", MON / "prometheus.yml")


def test_promtool_unit_tests():
    run("test", "rules", MON / "tests" / "alerts_test.yml")


def test_promtool_parses_dashboard_queries(tmp_path):
    """Each panel query, as a recording rule, through promtool (Grafana's $__rate_interval -> 5m)."""
    records = []
    for p in panels():
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m")
            assert "$" not in expr, f"{p['title']}: unknown Grafana variable in {expr}"
            records.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run("check", "rules", path)


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load((MON / "tests" / "alerts_test.yml").read_text())
    fires, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == EXPECTED_ALERTS, EXPECTED_ALERTS - fires
    assert quiet == EXPECTED_ALERTS, EXPECTED_ALERTS - quiet
