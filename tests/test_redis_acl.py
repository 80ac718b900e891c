"""The Redis ACL user documented in config/production.example.toml is enough for the engine:
the worker's writes (the apply script, the personal model) and the API's reads and view builds
run as exactly that user, and the user can touch nothing outside the engine's namespace."""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio

from engine.config import Settings
from engine.contracts import Catalogue, Validator
from engine.core.activity import dead_letter_ops
from engine.core.compose import decision_core
from engine.embedded import start_redis
from engine.recommend.personal import PersonalModel
from engine.recommend.query import Recommender
from engine.store import StateStore
from engine.views import pipeline_stats

from .conftest import REPO
from .helpers import tagged_rees46

pytestmark = pytest.mark.integration


def documented_acl_rule() -> list[str]:
    """The ACL SETUSER arguments as the production example documents them."""
    text = (REPO / "config" / "production.example.toml").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "ACL SETUSER" in line)
    rule = lines[start].split("ACL SETUSER", 1)[1]
    for line in lines[start + 1:]:
        if not re.match(r"^#\s{3,}\+", line):
            break
        rule += " " + line.lstrip("# ")
    return rule.split()


async def test_the_documented_acl_user_can_run_the_engine_and_nothing_else(
        base_settings: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    server = start_redis(tmp_path, fresh=True)
    password = secrets.token_urlsafe(16)
    admin = redis.Redis.from_url(server.url)
    try:
        user, *rules = documented_acl_rule()
        assert user == "decision-engine" and "~engine:*" in rules
        admin.execute_command("ACL", "SETUSER", user,
                              *[f">{password}" if r == ">PASSWORD" else r for r in rules])
        settings = dataclasses.replace(base_settings, redis=dataclasses.replace(
            base_settings.redis, url=server.url, username=user, password=password,
            namespace="engine"))
        store = StateStore.open(settings.redis)
        try:
            records = tagged_rees46(uuid.uuid4().hex[:6], limit=400)
            validator, core = Validator(catalogue, settings.validation), decision_core(settings)
            personal = PersonalModel(settings.recommend)
            for topic in sorted({r.topic for r in records}):
                events = [r.event for r in records if r.topic == topic]
                batch = []
                for offset, event in enumerate(events):
                    rejected = validator.check_event(topic, event)
                    batch.append((offset, dead_letter_ops(rejected.reason) if rejected
                                  else core(topic, event)))
                valid = [(o, e) for o, e in enumerate(events)
                         if validator.check_event(topic, e) is None]
                learned = await personal.ops(store, topic, 0, valid)
                batch = [(o, ops + learned.get(o, [])) for o, ops in batch]
                await store.apply(topic, 0, batch)
            stats = await pipeline_stats(store, catalogue)
            assert stats["events_in"] == len(records)
            recommender = Recommender(store, catalogue, settings)
            viewed = next(r.event for r in records if r.event.get("event_type") == "view"
                          and validator.check_event("clicks", r.event) is None)
            similar = await recommender.similar(viewed["item_id"], 5)
            personal_list = await recommender.for_user(viewed["user_id"], 5, None, None)
            assert similar.items is not None and personal_list.items
            # and nothing else: other namespaces, dangerous commands
            with pytest.raises(redis.exceptions.NoPermissionError):
                await store.client.set("other:key", "1")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await store.client.flushall()
            with pytest.raises(redis.exceptions.NoPermissionError):
                await store.client.config_get("*")
        finally:
            await store.close()
    finally:
        admin.close()
        server.stop()
