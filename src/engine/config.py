"""Configuration: loaded once at the entry point, validated, frozen.

Sources, later ones winning: ``config/default.toml`` (every key documented there), an optional
overlay file, then environment variables ``ENGINE_<SECTION>_<KEY>``. Unknown sections or keys and
values of the wrong type are rejected with a ``ConfigError`` that names the key. Nothing below the
entry point reads the environment; it receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.core.guardrails import COMPETITOR_RULES, Rules
from engine.errors import ConfigError
from engine.resources import REPO_ROOT, data_dir

ENV_PREFIX = "ENGINE_"


def utc_midnight_ms(iso_date: str) -> int:
    """Milliseconds since the epoch of 00:00 UTC on an ISO date ("2019-10-01")."""
    day = dt.date.fromisoformat(iso_date)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


@dataclass(frozen=True)
class KafkaSettings:
    url: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str = field(repr=False)
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    replication_factor: int
    create_topics: bool

    def kafka_python_options(self) -> dict[str, Any]:
        """Security options in kafka-python's spelling (admin client, replay producer)."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            opts |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.security_protocol.endswith("SSL"):
            opts |= {k: v for k, v in (("ssl_cafile", self.ssl_cafile),
                                       ("ssl_certfile", self.ssl_certfile),
                                       ("ssl_keyfile", self.ssl_keyfile)) if v}
        return opts


@dataclass(frozen=True)
class RedisSettings:
    url: str
    username: str
    password: str = field(repr=False)
    cluster: bool
    ssl_ca_certs: str
    namespace: str


@dataclass(frozen=True)
class WorkerSettings:
    group_id: str
    batch_max: int
    batch_within_ms: float
    fetch_max_wait_ms: int
    producer_linger_ms: float
    session_timeout_s: float
    commit_interval_s: float
    metrics_port: int
    heartbeat_interval_s: float
    views_child: bool
    pricing_child: bool


@dataclass(frozen=True)
class ValidationSettings:
    max_event_bytes: int
    max_future_skew_s: float
    min_event_time: str
    dedupe_window: int

    @property
    def min_event_time_ms(self) -> int:
        return utc_midnight_ms(self.min_event_time)


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    worker_stale_after_s: float
    max_in_flight: int
    read_timeout_s: float
    keys: tuple[str, ...] = field(repr=False)
    require_keys: bool
    rate_limit_per_s: float
    rate_limit_burst: float
    max_body_bytes: int


@dataclass(frozen=True)
class EmbeddedSettings:
    run_dir: str
    host: str
    kafka_port: int
    redis_port: int
    api_port: int


@dataclass(frozen=True)
class ReplaySettings:
    datasets_dir: str
    rees46_regions: tuple[str, ...]

    @property
    def datasets_path(self) -> Path:
        path = Path(self.datasets_dir)
        return path if path.is_absolute() else (REPO_ROOT / path).resolve()


@dataclass(frozen=True)
class RecommendSettings:
    weight_view: float
    weight_wishlist: float
    weight_rating: float
    weight_rating_low: float
    weight_cart: float
    weight_purchase: float
    half_life_days: float
    decay_epoch: str
    session_window_minutes: float
    purchase_window_days: float
    history_size: int
    partners_per_event: int
    neighbours_per_item: int
    max_lines_linked: int
    bought_together_boost: float
    seed_items: int
    seed_half_life_hours: float
    recent_items_weight: float
    context_weight: float
    context_category_boost: float
    mf_factors: int
    mf_learning_rate: float
    mf_l2: float
    mf_negatives: int
    mf_ring: int
    mf_blend: float
    repurchasable_categories: tuple[str, ...]
    max_per_brand: int
    max_per_category: int
    user_shards: str
    view_size: int
    view_refresh_s: float
    view_refresh_max: int
    view_ttl_hours: float
    trending_cache_s: float
    trending_size: int

    @property
    def decay_epoch_ms(self) -> int:
        return utc_midnight_ms(self.decay_epoch)


@dataclass(frozen=True)
class PricingSettings:
    enabled: bool
    objective: str
    currency: str
    max_step: float
    min_interval_minutes: float
    cap_at_list_price: bool
    competitor_rule: str
    beat_by: float
    ignored_competitors: tuple[str, ...]
    category_rules: tuple[str, ...]
    outlier_ratio: float
    outlier_confirmations: int
    competitor_stale_hours: float
    reprice_interval_minutes: float
    arm_spacing: float
    arm_levels: int
    learning_rate: float
    l2: float
    prior_strength: float
    low_cover_days: float
    high_cover_days: float
    history_size: int
    model_version: str

    def rules(self, category: str = "") -> Rules:
        """The guardrail rules for an item of ``category`` (the longest matching prefix of
        ``category_rules`` picks its competitor rule)."""
        rule, best = self.competitor_rule, -1
        for entry in self.category_rules:
            prefix, _, value = entry.partition("=")
            if (category == prefix or category.startswith(prefix + ".")) and len(prefix) > best:
                rule, best = value, len(prefix)
        return Rules(max_step=self.max_step,
                     min_interval_ms=round(self.min_interval_minutes * 60_000),
                     cap_at_list_price=self.cap_at_list_price, competitor_rule=rule,
                     beat_by=self.beat_by, ignored_competitors=frozenset(self.ignored_competitors),
                     outlier_ratio=self.outlier_ratio,
                     competitor_stale_ms=round(self.competitor_stale_hours * 3_600_000))


@dataclass(frozen=True)
class StockingSettings:
    enabled: bool
    service_level: float
    cover_days: float
    signal_interval_minutes: float
    update_change: float
    half_life_days: float
    pool_days: float
    interval: float
    lead_half_life_hours: float
    model_version: str
    return_params: tuple[float, ...]
    return_horizon_days: float


@dataclass(frozen=True)
class Region:
    dc: str
    lead_time_days: float


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    redis: RedisSettings
    worker: WorkerSettings
    validation: ValidationSettings
    api: ApiSettings
    embedded: EmbeddedSettings
    replay: ReplaySettings
    recommend: RecommendSettings
    pricing: PricingSettings
    stocking: StockingSettings
    regions: Mapping[str, Region]

    def region(self, name: str) -> Region:
        return self.regions.get(name) or self.regions["default"]

    def with_urls(self, kafka_url: str, redis_url: str) -> Settings:
        """A copy pointing at given servers (the embedded stack fills them in at start-up)."""
        return dataclasses.replace(
            self,
            kafka=dataclasses.replace(self.kafka, url=kafka_url),
            redis=dataclasses.replace(self.redis, url=redis_url),
        )


_SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings,
    "redis": RedisSettings,
    "worker": WorkerSettings,
    "validation": ValidationSettings,
    "api": ApiSettings,
    "embedded": EmbeddedSettings,
    "replay": ReplaySettings,
    "recommend": RecommendSettings,
    "pricing": PricingSettings,
    "stocking": StockingSettings,
}


def load_settings(
    overlay: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge default.toml, the overlay file and ``environ``; validate; freeze."""
    raw = _read_toml(data_dir("config") / "default.toml")
    if overlay is not None:
        _merge(raw, _read_toml(overlay), source=str(overlay))
    if environ:
        _merge(raw, _from_environment(environ, raw), source="environment")
    return _build(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any], source: str) -> None:
    for section, values in extra.items():
        if section not in base:
            raise ConfigError(f"unknown configuration section [{section}] in {source}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] in {source} must be a table")
        if section != "regions":
            unknown = set(values) - set(base[section])
            if unknown:
                raise ConfigError(f"unknown key {section}.{sorted(unknown)[0]} in {source}")
        base[section].update(values)


def _from_environment(environ: Mapping[str, str], raw: Mapping[str, Any]) -> dict[str, Any]:
    """ENGINE_KAFKA_SASL_USERNAME -> kafka.sasl_username (section names have no underscore)."""
    out: dict[str, dict[str, Any]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("ENGINE_CONFIG", "ENGINE_HOME"):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in raw or section == "regions" or not key:
            raise ConfigError(f"environment variable {name} names no configuration key")
        out.setdefault(section, {})[key] = _parse_env_value(text, raw[section].get(key))
    return out


def _parse_env_value(text: str, default: Any) -> Any:
    if isinstance(default, str):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(raw: Mapping[str, Any]) -> Settings:
    built = {name: _build_section(name, cls, raw[name]) for name, cls in _SECTIONS.items()}
    regions = {}
    for name, spec in raw["regions"].items():
        if not isinstance(spec, Mapping) or "dc" not in spec:
            raise ConfigError(f"regions.{name} must be a table with dc and lead_time_days")
        regions[name] = Region(dc=str(spec["dc"]), lead_time_days=float(spec["lead_time_days"]))
    if "default" not in regions:
        raise ConfigError("regions.default is required (used for unlisted regions)")
    settings = Settings(**built, regions=regions)
    _check(settings)
    return settings


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            raise ConfigError(f"missing configuration key {name}.{f.name}")
        kwargs[f.name] = _coerce(f"{name}.{f.name}", values[f.name], str(f.type))
    return cls(**kwargs)


#: Keys whose values are secrets: errors about them never quote the value.
SECRET_KEYS = frozenset({"kafka.sasl_password", "redis.password", "redis.url", "api.keys"})


def _coerce(key: str, value: Any, type_name: str) -> Any:
    try:
        return _coerce_value(key, value, type_name)
    except ConfigError as exc:
        if key in SECRET_KEYS:
            raise ConfigError(f"{key} has the wrong type (the value is a secret: not shown)"
                              ) from None
        raise exc from None


def _coerce_value(key: str, value: Any, type_name: str) -> Any:
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if type_name in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if type_name == "int" and value != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value) if type_name == "int" else float(value)
    if type_name == "tuple[float, ...]":
        if not isinstance(value, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if type_name.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _check(s: Settings) -> None:
    protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    if s.kafka.security_protocol not in protocols:
        raise ConfigError(f"kafka.security_protocol must be one of {protocols}")
    if s.kafka.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError("kafka.sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    if s.redis.url and not s.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url must start with redis://, rediss:// or unix:// (the URL "
                          "may hold a password: not shown)")
    positive = {
        "worker.batch_max": s.worker.batch_max,
        "worker.fetch_max_wait_ms": s.worker.fetch_max_wait_ms,
        "worker.session_timeout_s": s.worker.session_timeout_s,
        "validation.max_event_bytes": s.validation.max_event_bytes,
        "validation.max_future_skew_s": s.validation.max_future_skew_s,
        "api.max_in_flight": s.api.max_in_flight,
        "api.read_timeout_s": s.api.read_timeout_s,
        "api.max_body_bytes": s.api.max_body_bytes,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if s.api.rate_limit_per_s < 0 or s.api.rate_limit_burst < 1:
        raise ConfigError("api.rate_limit_per_s must be >= 0 (0 = off) and api.rate_limit_burst "
                          ">= 1")
    # The API's own parser: one definition of a key.
    from engine.api.auth import parse_keys
    parse_keys(s.api.keys)
    if not s.redis.namespace or any(c in s.redis.namespace for c in "{} "):
        raise ConfigError(f"redis.namespace must be non-empty without braces or spaces: "
                          f"{s.redis.namespace!r}")
    for key, date in (("validation.min_event_time", s.validation.min_event_time),
                      ("recommend.decay_epoch", s.recommend.decay_epoch)):
        try:
            utc_midnight_ms(date)
        except ValueError:
            raise ConfigError(f"{key} must be an ISO date: {date!r}") from None
    r = s.recommend
    for key in ("half_life_days", "session_window_minutes", "purchase_window_days",
                "history_size", "partners_per_event", "neighbours_per_item", "seed_items",
                "seed_half_life_hours", "mf_factors", "mf_learning_rate", "mf_ring",
                "view_size", "view_refresh_s", "view_refresh_max", "view_ttl_hours",
                "trending_cache_s", "trending_size"):
        if getattr(r, key) <= 0:
            raise ConfigError(f"recommend.{key} must be positive, got {getattr(r, key)}")
    if r.user_shards not in ("keyed", "all"):
        raise ConfigError(f"recommend.user_shards must be \"keyed\" or \"all\", "
                          f"got {r.user_shards!r}")
    if not 0 <= r.mf_blend <= 1:
        raise ConfigError(f"recommend.mf_blend must be within [0, 1], got {r.mf_blend}")
    _check_pricing(s.pricing)
    _check_stocking(s.stocking)
    for name, region in s.regions.items():
        if region.lead_time_days <= 0:
            raise ConfigError(f"regions.{name}.lead_time_days must be positive")


def _check_stocking(k: StockingSettings) -> None:
    for key in ("cover_days", "signal_interval_minutes", "lead_half_life_hours",
                "update_change"):
        if getattr(k, key) < 0:
            raise ConfigError(f"stocking.{key} must not be negative, got {getattr(k, key)}")
    for key in ("half_life_days", "pool_days", "return_horizon_days"):
        if getattr(k, key) <= 0:
            raise ConfigError(f"stocking.{key} must be positive, got {getattr(k, key)}")
    for key in ("service_level", "interval"):
        if not 0.5 <= getattr(k, key) < 1:
            raise ConfigError(f"stocking.{key} must be within [0.5, 1), got {getattr(k, key)}")
    if len(k.return_params) != 4 or any(v <= 0 for v in k.return_params):
        raise ConfigError("stocking.return_params must be four positive numbers "
                          "[r, alpha, a, b]")


def _check_pricing(p: PricingSettings) -> None:
    for key in ("max_step", "outlier_ratio", "outlier_confirmations", "competitor_stale_hours",
                "reprice_interval_minutes", "arm_spacing", "arm_levels", "learning_rate",
                "prior_strength", "history_size"):
        if getattr(p, key) <= 0:
            raise ConfigError(f"pricing.{key} must be positive, got {getattr(p, key)}")
    for key in ("min_interval_minutes", "beat_by", "l2", "low_cover_days", "high_cover_days"):
        if getattr(p, key) < 0:
            raise ConfigError(f"pricing.{key} must not be negative, got {getattr(p, key)}")
    if p.max_step >= 1 or p.beat_by >= 1:
        raise ConfigError("pricing.max_step and pricing.beat_by must be fractions below 1")
    if p.outlier_ratio <= 1:
        raise ConfigError(f"pricing.outlier_ratio must be above 1, got {p.outlier_ratio}")
    if p.objective not in ("profit", "revenue"):
        raise ConfigError(f"pricing.objective must be \"profit\" or \"revenue\", "
                          f"got {p.objective!r}")
    rules = [p.competitor_rule] + [e.partition("=")[2] for e in p.category_rules]
    for entry in p.category_rules:
        if "=" not in entry or not entry.partition("=")[0]:
            raise ConfigError(f"pricing.category_rules entries are \"category=rule\", "
                              f"got {entry!r}")
    bad = [r for r in rules if r not in COMPETITOR_RULES]
    if bad:
        raise ConfigError(f"pricing competitor rule {bad[0]!r} is not one of {COMPETITOR_RULES}")
    if len(p.currency) != 3 or not p.currency.isupper():
        raise ConfigError(f"pricing.currency must be an ISO 4217 code, got {p.currency!r}")


def item_stages_enabled(settings: Settings) -> bool:
    """Whether anything consumes the item-keyed signals (pricing or stocking)."""
    return settings.pricing.enabled or settings.stocking.enabled
