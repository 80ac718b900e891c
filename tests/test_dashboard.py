"""The Grafana dashboard (config/grafana/engine-dashboard.json) queries only metrics the worker
and the API export, grouped by labels those metrics have: a renamed metric or label fails here,
not silently on an SRE's screen."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from prometheus_client import REGISTRY

import engine.api.app  # noqa: F401  (registers the API's metrics)
import engine.metrics  # noqa: F401  (registers the worker's metrics)

DASHBOARD = Path(__file__).resolve().parents[1] / "config" / "grafana" / "engine-dashboard.json"
METRIC = re.compile(r"\b(engine_[a-z_]+)\b")
GROUPING = re.compile(r"\bby \(([^)]*)\) \(([^()]*\()?[^()]*?\b(engine_[a-z_]+)")


def _collector(name: str) -> object:
    for suffix in ("_bucket", "_count", "_sum", ""):
        if name.endswith(suffix) and name[: len(name) - len(suffix)] in _names():
            return _names()[name[: len(name) - len(suffix)]]
    raise AssertionError(f"the dashboard queries {name}, which nothing exports")


def _names() -> dict[str, object]:
    return REGISTRY._names_to_collectors   # type: ignore[attr-defined, no-any-return]


def test_every_query_names_an_exported_metric_and_its_labels() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            _collector(name)
        for labels, _, name in GROUPING.findall(expr):
            known = set(getattr(_collector(name), "_labelnames", ())) | {"le"}
            wanted = {label.strip() for label in labels.split(",") if label.strip()}
            assert wanted <= known, f"{expr}: {sorted(wanted - known)} not labels of {name}"


def test_panels_are_laid_out_without_overlap_and_name_the_data_source() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
        assert p["datasource"]["uid"] == "${datasource}" and p["description"]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
