"""A log-bucketed latency histogram (HDR-style: ~4.4 % relative resolution, any range).

Buckets are ``floor(16 * log2(microseconds))``: 16 sub-buckets per doubling. Counts are plain
integers keyed by bucket, so histograms from several workers merge by addition and travel through
Redis as a hash of numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

SUB_BUCKETS = 16


def bucket_of(ms: float) -> int:
    micros = max(ms * 1000.0, 1.0)
    return int(math.floor(SUB_BUCKETS * math.log2(micros)))


def bucket_ms(bucket: int) -> float:
    """Representative value of a bucket: its geometric midpoint, in milliseconds."""
    return float(2.0 ** ((bucket + 0.5) / SUB_BUCKETS) / 1000.0)


class LatencyHistogram:
    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> LatencyHistogram:
        return cls({int(k): int(v) for k, v in fields.items()})

    def record(self, ms: float, n: int = 1) -> None:
        self.counts[bucket_of(ms)] += n

    def record_many(self, values_ms: Iterable[float]) -> None:
        for ms in values_ms:
            self.counts[bucket_of(ms)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """Value at quantile q in [0, 1], or None if empty."""
        total = self.total
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return bucket_ms(bucket)
        return bucket_ms(max(self.counts))

    def summary(self) -> dict[str, float | None]:
        return {name: self.percentile(q) for name, q in
                (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))}

    def drain(self) -> dict[int, int]:
        """Counts since the last drain (what a worker adds to the shared histogram)."""
        out = dict(self.counts)
        self.counts.clear()
        return out
