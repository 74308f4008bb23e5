"""What runs inside Ray for `dsvl batch --ray`: image preparation (Ray tasks) and the engine actors.

batch/ray_job.py builds the pipeline; this module is what the workers import (from the copy of
dsvl_cli that the job ships to them, see ray_job.runtime_env). Rows are Arrow columns:

    idx      int64   the record's position among the records to do (the driver maps it back)
    payload  binary  pickle of (Record, the sources to read); null for a line that did not parse
    out      string  the output record's line (output.record_json), once the row is answered or failed (else null)
    failed   bool    the output record is an error record
    tokens   int64   generated tokens
    worker   string  host:pid of the engine actor that answered it
    prepared binary  (between the two stages) pickle of source -> PreparedImage or (source, reason)

Why pickles in binary columns: a Record holds GenerationSettings (with --schema/--choices, sampling
options) and PreparedImage holds tensors; both travel whole, exactly as the local runner uses them,
instead of being flattened into columns and rebuilt. Image errors travel as (source, reason)
because DsvlError subclasses do not pickle (their __init__ takes more than the message).
"""

from __future__ import annotations

import os
import pickle
import socket
import time

import pyarrow as pa

from dsvl_cli.batch.output import record_json
from dsvl_cli.errors import DsvlError, ImageLoadError

OUTPUT_COLUMNS = ("idx", "payload", "out", "failed", "tokens", "worker")


class WorkerLoadError(RuntimeError):
    """The engine actor could not load the model. Its message is the one line the user sees; the
    driver finds it in Ray's error by this class's name (Ray wraps it in ActorDiedError)."""


def prepare_block(table: pa.Table, processor, exact: bool) -> pa.Table:
    """Load and preprocess every image of a block (a Ray task, ahead of the engine actors): each
    source once per block, through the local runner's own intake and preprocessing."""
    from dsvl_cli.batch.sources import load_source
    from dsvl_cli.engine.batched import PreparedImage
    from dsvl_cli.engine.preprocess import pixels
    from dsvl_cli.images import LoadedImage

    done: dict = {}

    def prepare(source: str, where: str):
        try:
            loaded = load_source(where, exact=exact)
        except ImageLoadError as err:  # load_source's only failure
            return (source, err.reason)
        loaded = LoadedImage(source, loaded.image, loaded.load_s)  # named as the user wrote it
        started = time.perf_counter()
        return PreparedImage(loaded, pixels(processor.image_processor, loaded.image), time.perf_counter() - started)

    column = []
    for payload, out in zip(table.column("payload").to_pylist(), table.column("out").to_pylist()):
        if payload is None or out is not None:
            column.append(None)
            continue
        record, where = pickle.loads(payload)
        for source, path in zip(record.images, where):
            if source not in done:
                done[source] = prepare(source, path)
        column.append(pickle.dumps({s: done[s] for s in record.images}))
    return table.append_column("prepared", pa.array(column, pa.binary()))


class EngineWorker:
    """One engine actor: loads the model once (dsvl's LocalEngine, with the fast path where it
    pays), then answers each block through the local runner's answer_batch."""

    def __init__(self, settings, batch_size: int | None):
        from dsvl_cli.engine.local import LocalEngine

        try:
            self.engine = LocalEngine.load(settings, prefer_fast=True)
        except DsvlError as err:
            raise WorkerLoadError(err.message) from None
        self.batch_size = batch_size or self.engine.default_batch_size
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, table: pa.Table) -> pa.Table:
        from dsvl_cli.batch.answer import answer_batch, plan_batches
        from dsvl_cli.engine.batched import FeatureStore

        cols = {name: table.column(name).to_pylist() for name in (*OUTPUT_COLUMNS, "prepared")}
        todo, prepared = [], {}
        for row, (payload, out, ready) in enumerate(zip(cols["payload"], cols["out"], cols["prepared"])):
            if out is None and payload is not None:
                todo.append((row, pickle.loads(payload)[0]))
                for source, value in pickle.loads(ready).items():
                    prepared[source] = ImageLoadError(*value) if isinstance(value, tuple) else value
        features = FeatureStore(self.engine)
        for source in (s for _, record in todo for s in record.images):
            features.expect(source)
        rows = {id(record): row for row, record in todo}
        for batch in plan_batches(self.engine, [record for _, record in todo], self.batch_size):
            for record, obj, failed, tokens in answer_batch(self.engine, batch, prepared, features):
                row = rows[id(record)]
                cols["out"][row] = record_json(obj)
                cols["failed"][row], cols["tokens"][row], cols["worker"][row] = failed, tokens, self.name
        return pa.table({name: pa.array(cols[name], table.schema.field(name).type) for name in OUTPUT_COLUMNS})
