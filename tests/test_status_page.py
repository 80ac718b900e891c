"""The status page in a real browser: headless Chromium loads ``/status`` from an API process on
the shared stack, after real events went through the shared worker, and the numbers render
(events, rates, latency percentiles, dead letters, a price change). A screenshot is written to
``benchmarks/results/status_page.png``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess, free_port

from .conftest import REPO, SHARED_WORKER_ENV, worker_env
from .helpers import tagged_rees46
from .test_prices_end_to_end import real_events

pytestmark = pytest.mark.integration

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


class Cells(HTMLParser):
    """Text by element id, and the text of every row of each table (by the table's id)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.body: dict[str, str] = {}
        self._ids: list[str | None] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        self._ids.append(a.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table and self._row is not None:
            if self._row:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._ids:
            self._ids.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for element in self._ids:
            if element:
                self.text[element] = self.text.get(element, "") + data


def browser() -> str:
    found = next((b for b in BROWSERS if shutil.which(b)), None)
    assert found, "headless Chromium is needed (.ci/run installs Debian's chromium)"
    return found


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return orjson.loads(response.read())


def test_status_page_renders_live_numbers(settings: Settings, catalogue: Catalogue,
                                          worker: ManagedProcess, tmp_path: Path) -> None:
    token = f"st{uuid.uuid4().hex[:8]}"
    port = free_port("127.0.0.1")
    api = ManagedProcess("api", [sys.executable, "-m", "engine", "api", "--host", "127.0.0.1",
                                 "--port", str(port)], tmp_path / "api.log",
                         env=worker_env(settings, **SHARED_WORKER_ENV))
    api.start()
    url = f"http://127.0.0.1:{port}"
    try:
        api.wait_ready(lambda: _ok(url + "/healthz"), timeout=30)
        # real traffic: REES46 clicks, a real competitor drop (a price change), one bad record
        cat, drop = real_events(token)
        producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5)
        for r in tagged_rees46(token, 300):
            producer.send(r.topic, key=r.key.encode(), value=orjson.dumps(r.event))
        producer.send("catalog", key=cat["item_id"].encode(), value=orjson.dumps(cat))
        for e in drop:
            producer.send("competitor-prices", key=e["item_id"].encode(), value=orjson.dumps(e))
        producer.send("clicks", key=token.encode(), value=b'{"truncated": ')
        producer.flush()
        producer.close()
        deadline = time.time() + 60
        while True:
            status = get_json(url + "/v1/status")
            priced = [c for c in status["prices"]["recent"] if c["item_id"] == cat["item_id"]]
            if priced and status["dlq"].get("malformed_json") or time.time() > deadline:
                break
            time.sleep(0.5)
        assert priced, "the competitor drop's price change reaches /v1/status"
        assert status["events"]["total"] >= 300 and status["latency"]["count"] > 0
        assert status["workers"] and status["dlq"]["malformed_json"] >= 1

        shot = REPO / "benchmarks" / "results" / "status_page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        common = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--window-size=1280,1100", "--virtual-time-budget=5000"]
        dom = subprocess.run([*common, "--dump-dom", url + "/status"], capture_output=True,
                             text=True, timeout=90, check=True).stdout
        subprocess.run([*common, f"--screenshot={shot}", url + "/status"], capture_output=True,
                       timeout=90, check=True)
    finally:
        api.stop()

    page = Cells()
    page.feed(dom)
    assert page.body.get("data-updated"), "the page fetched /v1/status and rendered it"
    assert "live worker" in page.text["state"]
    total = int(page.text["events-total"].replace(",", ""))
    assert total >= status["events"]["total"]          # rendered later, so at least as many
    assert NUMBER.match(page.text["rate-total"]), page.text["rate-total"]
    topics = {row[0]: row for row in page.rows["topics"]}
    assert set(topics) == set(status["topics"])
    assert all(NUMBER.match(cell) for row in topics.values() for cell in row[1:])
    since_start = next(r for r in page.rows["latency"] if r[0] == "since start")
    assert all(NUMBER.match(cell) for cell in since_start[1:]), since_start
    assert float(since_start[3].replace(",", "")) >= float(since_start[1].replace(",", ""))
    dlq = {row[0]: int(row[1].replace(",", "")) for row in page.rows["dlq"]}
    assert dlq["malformed_json"] >= status["dlq"]["malformed_json"]
    prices = [row for row in page.rows["prices"] if row[0] == cat["item_id"]]
    assert prices and NUMBER.match(prices[0][2].split()[0]), page.rows.get("prices")
    assert shot.is_file() and shot.stat().st_size > 10_000


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False
