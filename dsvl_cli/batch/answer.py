"""Planning batches and answering one: the part of `dsvl batch` that local runs (batch/runner.py)
and the Ray engine actors (batch/ray_workers.py) share, so both give the same records and answers.
No torch at import.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from dsvl_cli.batch.records import Record
from dsvl_cli.batch.output import error_record, result_record
from dsvl_cli.engine import decisions
from dsvl_cli.errors import DsvlError
from dsvl_cli.structured.grammar import shared_settings


def plan_batches(engine, records: list[Record], batch_size: int) -> list[list[Record]]:
    """Records grouped by generation settings, sorted by prompt length, cut into batches.

    Similar lengths together keep padding small; the same images next to each other let their
    features be shared while still cached.
    """
    per_image = engine.image_tokens
    lengths = engine.text_tokens([(r.system or "") + r.prompt for r in records])
    groups: dict = {}
    for record, length in zip(records, lengths):
        estimate = length + per_image * len(record.images)
        key = shared_settings(record.gen.replace(system=None))  # a schema or regex is per row
        groups.setdefault(key, []).append((estimate, tuple(record.images), record))
    batches = []
    for members in groups.values():
        members.sort(key=lambda m: (m[0], m[1]))
        batches += [[m[2] for m in members[k:k + batch_size]] for k in range(0, len(members), batch_size)]
    return batches


def answer_batch(engine, batch: list[Record], prepared: dict, features, *,
                 stop: threading.Event | None = None) -> Iterator[tuple[Record, dict, bool, int]]:
    """One planned batch (records sharing their settings) through `generate_batch`: yields
    (record, output record, failed, generated tokens) for each record, error records for bad images
    first. Records cut short by `stop` are not yielded (left for --resume). `prepared` maps each
    source to its PreparedImage or ImageLoadError; `features` (a FeatureStore that expects these
    sources) is released for the batch's sources at the end. Local batch and the Ray workers
    (batch/ray_workers.py) both answer through here: the same records, the same answers."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.batched import BatchItem, generate_batch

    ready: list[tuple[Record, BatchItem]] = []
    for record in batch:
        bad = next((prepared[s] for s in record.images if isinstance(prepared[s], DsvlError)), None)
        if bad is not None:
            yield record, error_record(record, bad.kind, bad.message), True, 0
            continue
        images = [prepared[s] for s in record.images]
        conversation = Conversation.single(record.prompt, [p.loaded for p in images], record.system)
        ready.append((record, BatchItem(conversation, images, answer_format=record.gen.answer_format)))
    if ready and decisions.wanted(batch[0].gen):  # typed questions: one shared prefill per record
        yield from _decide(engine, ready, stop)
        ready = []
    if ready and not (stop is not None and stop.is_set()):
        gen = shared_settings(batch[0].gen.replace(system=None))
        results = generate_batch(engine, [item for _, item in ready], gen, features=features, stop_event=stop)
        for (record, _), result in zip(ready, results):
            if isinstance(result, DsvlError):
                yield record, error_record(record, result.kind, result.message), True, 0
            elif result.finish_reason != "interrupted":  # cut short: left for --resume
                obj, failed = result_record(record, result)  # a schema's JSON cut by -n: an error record
                yield record, obj, failed, result.stats.generated_tokens
    for source in (s for r in batch for s in r.images):
        features.release(source)


def _decide(engine, ready: list, stop: threading.Event | None) -> Iterator[tuple[Record, dict, bool, int]]:
    """Records of typed questions (each its own request: engine/decisions.py), in order, until `stop`."""
    for record, item in ready:
        if stop is not None and stop.is_set():
            return  # left for --resume
        try:
            result = engine.run(item.conversation, record.gen)
        except DsvlError as err:
            yield record, error_record(record, err.kind, err.message), True, 0
            continue
        yield record, result_record(record, result)[0], False, 0
