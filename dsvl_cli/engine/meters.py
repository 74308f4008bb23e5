"""What the engine loop counts, for /metrics (serve/metrics.py turns it into Prometheus text).

Plain numbers written by the loop's thread and read by anyone: no lock (an int read is atomic in
CPython, and a scrape that sees one counter a step behind another is fine). No prometheus here: the
engine does not depend on the server's extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# seconds; the last bucket is +Inf
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = TTFT_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        index = next((k for k, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count of observations <= it), the last bound "+Inf"."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


@dataclass
class Meters:
    running: int = 0
    waiting: int = 0
    requests_total: int = 0
    prompt_tokens_total: int = 0
    prompt_tokens_cached_total: int = 0
    generation_tokens_total: int = 0
    image_cache_hits_total: int = 0
    image_cache_misses_total: int = 0
    kv_cache_bytes: int = 0  # the running rows' KV plus the prefix cache
    prefix_cache_bytes: int = 0
    prefix_cache_evictions_total: int = 0
    preemptions_total: int = 0
    ttft: Histogram = field(default_factory=Histogram)
