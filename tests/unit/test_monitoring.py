"""Metrics by Prometheus's conventions, and the alert rules and dashboard shipped beside them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.api.requests import ApiMetrics
from consumer.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
OPERATING = ROOT / "docs" / "operating.md"
# A name of ours in a query, a table or a rule.
OUR_NAME = re.compile(r"\btask_history_[a-z_]+[a-z]\b")


def expositions() -> dict[str, str]:
    """What a scrape of each process gets: the consumer, and `serve` once it read the database."""
    api = ApiMetrics()
    api.dead_letters.show({"invalid_json": 2}, replayed=1, purged=0)
    return {
        "consume": Metrics().render().decode(),
        "serve": generate_latest(api.registry).decode(),
    }


def families() -> dict[str, tuple[str, set[str]]]:
    """Our families across both processes: their type and the names of their samples."""
    found: dict[str, tuple[str, set[str]]] = {}
    for text in expositions().values():
        for family in text_string_to_metric_families(text):
            if family.name.startswith("task_history_"):
                found[family.name] = (family.type, {sample.name for sample in family.samples})
    return found


# The samples each type of family has (a labelled family has none until a child exists).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def sample_names() -> set[str]:
    """Every sample name of ours that a query may use."""
    return {name + suffix for name, (kind, _) in families().items() for suffix in SUFFIXES[kind]}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run Prometheus's promtool (Debian's `prometheus` package; .ci/run installs it)."""
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is not installed: apt-get install prometheus"
    return subprocess.run(
        [tool, *args], input=stdin, capture_output=True, text=True, cwd=MONITORING, check=False
    )


class TestMetricConventions:
    """What Prometheus's own linter and naming guide ask of the series."""

    @pytest.mark.parametrize("process", ["consume", "serve"])
    def test_promtool_check_metrics_is_silent(self, process: str) -> None:
        """`promtool check metrics` finds nothing to say about either process's scrape."""
        result = promtool("check", "metrics", stdin=expositions()[process])
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    def test_the_census_waits_for_the_database(self) -> None:
        """Before serve has read the dead letters, their series are absent, not zero."""
        api = ApiMetrics()
        assert b"task_history_dead_letters" not in generate_latest(api.registry)
        api.dead_letters.show({}, replayed=0, purged=0)
        text = generate_latest(api.registry).decode()
        assert 'task_history_dead_letters{code="invalid_json"} 0.0' in text

    def test_no_created_series(self) -> None:
        """No `_created` sample beside the counters and histograms."""
        created = [n for _, names in families().values() for n in names if n.endswith("_created")]
        assert created == []

    def test_counters_end_in_total_and_nothing_else_does(self) -> None:
        """A counter's samples end in `_total`; a gauge's or histogram's never do."""
        for name, (kind, names) in families().items():
            if kind == "counter":
                assert names <= {f"{name}_total"}, name
            else:
                assert not any(n.endswith("_total") for n in names), name

    def test_names_say_their_unit(self) -> None:
        """Histograms and byte or time gauges end in their unit."""
        units = ("_seconds", "_bytes", "_messages", "_entries", "_standbys")
        for name, (kind, _) in families().items():
            if kind == "histogram" or "bytes" in name or "seconds" in name:
                assert name.endswith(units), name


class TestDocumentedMetrics:
    """The metrics tables in docs/operating.md and the code name the same series."""

    def test_every_family_is_documented_and_every_documented_name_exists(self) -> None:
        """Each family of either process is in the guide, and each name there is exposed."""
        section = OPERATING.read_text(encoding="utf-8").split("## Metrics", 1)[1]
        section = section.split("\n## ", 1)[0]
        documented = set(OUR_NAME.findall(section))
        undocumented = [
            name
            for name, (kind, _) in families().items()
            if not {name, *(name + suffix for suffix in SUFFIXES[kind])} & documented
        ]
        assert undocumented == []
        assert documented - sample_names() - set(families()) == set()


class TestAlertRules:
    """docs/monitoring/alerts.yml loads, and behaves as its unit tests say."""

    def test_promtool_checks_the_rules(self) -> None:
        """`promtool check rules` accepts the file."""
        result = promtool("check", "rules", "alerts.yml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_unit_tests_pass(self) -> None:
        """`promtool test rules` runs alerts_test.yml: each alert fires when, and only when, due."""
        result = promtool("test", "rules", "alerts_test.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_the_rules_use_only_series_that_exist(self) -> None:
        """Every task_history_* name in a rule is one the processes expose."""
        used = set(OUR_NAME.findall((MONITORING / "alerts.yml").read_text(encoding="utf-8")))
        assert used
        assert used - sample_names() == set()


class TestDashboard:
    """docs/monitoring/dashboard.json, a Grafana dashboard of the same series."""

    def test_its_queries_use_only_series_that_exist(self) -> None:
        """Every panel queries the Prometheus picked at import, by names the processes expose."""
        dashboard = json.loads((MONITORING / "dashboard.json").read_text(encoding="utf-8"))
        [variable] = dashboard["templating"]["list"]
        assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
        targets = [target for panel in dashboard["panels"] for target in panel["targets"]]
        assert len(targets) >= len(dashboard["panels"]) >= 8
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}"
            used = set(OUR_NAME.findall(target["expr"]))
            assert used, target["expr"]
            assert used - sample_names() == set(), target["expr"]

    def test_panel_ids_are_unique_and_none_overlap(self) -> None:
        """Grafana needs distinct ids; panels placed on one spot would hide each other."""
        panels = json.loads((MONITORING / "dashboard.json").read_text(encoding="utf-8"))["panels"]
        assert len({panel["id"] for panel in panels}) == len(panels)
        spots = [(panel["gridPos"]["x"], panel["gridPos"]["y"]) for panel in panels]
        assert len(set(spots)) == len(spots)
