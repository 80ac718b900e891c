"""Prometheus metrics of the worker and the API (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Fine buckets where the latency targets are (1-50 ms), coarse beyond.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS = Counter("engine_events_total", "Input records by topic and outcome",
                 ["topic", "outcome"])  # outcome: applied | duplicate | dead_lettered
DEAD_LETTERS = Counter("engine_dead_letters_total", "Records sent to the DLQ by reason",
                       ["topic", "reason"])
STAGE = Histogram("engine_stage_seconds", "Time per batch in each processing stage",
                  ["stage"], buckets=_LATENCY_BUCKETS)
EVENT_TO_STATE = Histogram("engine_event_to_state_seconds",
                           "From the record's timestamp to its state being written to Redis",
                           ["topic"], buckets=_LATENCY_BUCKETS)
DELIVERY = Histogram("engine_delivery_seconds",
                     "From the record's timestamp to its batch reaching the worker's processor "
                     "(broker delivery and the batching window)", ["topic"],
                     buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("engine_batch_size", "Records per processed batch",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
REDIS_ERRORS = Counter("engine_redis_errors_total", "Redis calls that failed and were retried")
BROKER_ERRORS = Counter("engine_broker_errors_total", "Failed sends to the broker", ["topic"])
LAG = Gauge("engine_consumer_lag", "Records in the partition not yet applied to state",
            ["topic", "partition"])
LOG_RESETS = Counter("engine_log_resets_total", "Partitions whose broker log was found to end "
                     "below the Redis watermark (log lost); their offsets start again", ["topic"])
ASSIGNED = Gauge("engine_assigned_partitions", "Input partitions assigned to this worker")
FETCH_WAIT = Gauge("engine_fetch_max_wait_ms", "How long the worker lets the broker hold a "
                   "fetch: the configured wait, raised while partitions with records do not move")
VIEWS_REFRESHED = Counter("engine_reco_views_refreshed_total",
                          "Recommendation neighbour views rebuilt by this worker")
VIEW_BACKLOG = Gauge("engine_reco_view_backlog",
                     "Items touched whose neighbour view waits for the next refresh round")
PRICE_SIGNALS = Counter("engine_price_signals_forwarded_total",
                        "Price signals forwarded to price-signals, by source topic", ["topic"])
PRICE_SIGNAL_DUPLICATES = Counter("engine_price_signal_duplicates_total",
                                  "Re-sent price signals recognised by their source offset")
PRICE_CHANGES = Counter("engine_price_changes_total", "Price changes published to prices")
REPUBLISH_UNCHECKED = Counter("engine_republish_unchecked_total",
                              "Assignments whose output topic could not be read back: a batch "
                              "that crashed after publishing publishes again", ["topic"])
REPUBLISH_SKIPPED = Counter("engine_republish_skipped_total",
                            "Decisions of a batch that ran again (after a crash) not published "
                            "again: the topic already had them", ["topic"])
STOCKING_SIGNALS = Counter("engine_stocking_signals_total",
                           "Signals published to stocking-signals, by status (open, cleared)",
                           ["status"])
SIGNALS_REJECTED = Counter("engine_price_signals_rejected_total",
                           "Price signals the pricing stage rejected (competitor outliers, "
                           "other currencies, malformed signals), by reason", ["reason"])
