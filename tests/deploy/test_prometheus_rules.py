"""The alert rules shipped in infra/deploy/prometheus: valid, unit-tested with promtool, and built only on
metrics Envoi exports."""

from __future__ import annotations

import re
import subprocess

import yaml

from envoi.infra.metrics import GroupCollector, Metrics
from tests.support.prometheus import DEPLOY, binary

RULES = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # set by Prometheus for every scrape target
PROMQL_WORDS = {"sum", "rate", "increase", "max", "min", "by", "without", "clamp_min", "time", "avg", "and", "or",
                "unless", "on", "ignoring", "histogram_quantile", "count", "le", "topk", "bool", "offset", "irate",
                "delta", "label_replace", "vector", "scalar", "abs", "deriv", "sort_desc"}


def exported_names() -> set[str]:
    """Every series name Envoi's registry exposes (counters' _total, histograms' _bucket/_sum/_count)."""
    names = set()
    group = GroupCollector("smtp", lambda: (2, 2, 0))  # a process group's parent's own
    for family in [*Metrics().registry.collect(), *group.collect()]:
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?", "", expr)  # numbers (1e-9)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if w not in PROMQL_WORDS}


def test_promtool_checks_the_rules():
    result = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run([binary("promtool"), "test", "rules", "alerts_test.yml"], cwd=RULES.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_uses_exported_metrics():
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    tests = yaml.safe_load((RULES.parent / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {rule["alert"] for rule in rules} <= fired  # each alert has a case where it fires
    known = exported_names() | PROMETHEUS_OWN
    for rule in rules:
        assert metric_names(rule["expr"]) <= known, (rule["alert"], metric_names(rule["expr"]) - known)


def test_the_name_check_sees_an_unknown_metric():
    assert metric_names('sum(rate(envoi_nope_total{a="b"}[5m])) by (job) > 0') == {"envoi_nope_total"}
