"""GET /metrics: the warm engine's meters (engine/meters.py) in the Prometheus text format.

Names follow vLLM's and SGLang's where they mean the same (requests running and waiting, prompt and
generation token counters, a time-to-first-token histogram), with the `dsvl_` prefix. prometheus-client
writes the exposition format; the values are read from the engine's Meters at each scrape (one
collector, no second copy of the counts). An engine without a loop (a `--server` client engine, a
test fake) exposes the names with zeros.
"""

from __future__ import annotations

from dsvl_cli.engine.meters import Meters

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = {
    "requests_running": "Requests decoding now.",
    "requests_waiting": "Requests waiting for a free row.",
    "kv_cache_bytes": "Bytes of KV held: the running rows and the prefix cache.",
    "prefix_cache_bytes": "Bytes of KV kept in the prefix cache.",
}
_COUNTERS = {
    "requests": "Requests admitted to the engine.",
    "prompt_tokens": "Prompt tokens of admitted requests.",
    "prompt_tokens_cached": "Prompt tokens whose KV came from the prefix cache.",
    "generation_tokens": "Tokens generated.",
    "image_cache_hits": "Pictures whose vision features came from the image-feature cache.",
    "image_cache_misses": "Pictures run through the vision towers.",
    "prefix_cache_evictions": "Prefix-cache entries dropped to stay in --cache-memory.",
    "preemptions": "Rows sent back to wait (or failed) when memory ran out.",
}


class _Collector:
    def __init__(self, meters: Meters, model: str):
        self.meters, self.model = meters, model

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.meters
        values = {"requests_running": m.running, "requests_waiting": m.waiting}
        for name, doc in _GAUGES.items():
            family = GaugeMetricFamily(f"dsvl_{name}", doc, labels=["model"])
            family.add_metric([self.model], values.get(name, getattr(m, name, 0)))
            yield family
        for name, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"dsvl_{name}", doc, labels=["model"])
            family.add_metric([self.model], getattr(m, f"{name}_total"))
            yield family
        ttft = HistogramMetricFamily("dsvl_time_to_first_token_seconds",
                                     "Seconds from a request's arrival at the engine to its first token.",
                                     labels=["model"])
        ttft.add_metric([self.model], m.ttft.cumulative(), m.ttft.total)
        yield ttft


def registry_for(meters: Meters | None, model: str):
    """A registry that reads `meters` at every scrape (zeros when None)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(meters or Meters(), model))
    return registry


def render(registry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)
