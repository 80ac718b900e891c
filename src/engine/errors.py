"""The engine's exception tree.

    EngineError
    ├── ConfigError          a configuration key or value is missing or invalid (names the key)
    ├── ContractError        a topic catalogue or schema file is missing or inconsistent
    ├── EmbeddedError        the embedded broker or Redis cannot start (missing binary, port in use)
    ├── StateError           Redis state cannot be read or written as the layout expects
    ├── ReplayError          a data set cannot be read or replayed
    └── TailUnavailable      a stage's output topic cannot be read back on assignment

Invalid *input events* are not exceptions: they are data (a ``Rejection``) routed to a dead-letter
topic. Exceptions here mean the engine itself cannot do its job, and say which key, file, port,
topic, partition or offset is involved. The CLI prints them as one line and exits non-zero.
"""

import redis.exceptions

#: Redis errors worth waiting out (server restarting, failover); anything else is a bug.
TRANSIENT_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                          redis.exceptions.BusyLoadingError, redis.exceptions.TryAgainError,
                          redis.exceptions.ClusterDownError)


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A configuration key or value is missing or invalid."""


class ContractError(EngineError):
    """The topic catalogue or a schema is missing or inconsistent."""


class EmbeddedError(EngineError):
    """An embedded server (broker, Redis) cannot be started or stopped."""


class StateError(EngineError):
    """Redis state is unreachable or not in the documented layout."""


class ReplayError(EngineError):
    """A data set cannot be read or replayed."""


class TailUnavailable(EngineError):
    """A stage's output topic could not be read back (broker unreachable or too slow)."""
