"""`dsvl batch --ray`: the same records, answered by a pool of engine actors on a Ray cluster.

The pipeline (Ray Data): the driver (this process) reads the inputs, skips what --resume finds
done, and cuts the records into blocks of --batch-size (default 32 with GPUs, 8 without) ->
`prepare_block` Ray tasks load and preprocess the images -> `EngineWorker` actors (one model each,
--workers of them, one GPU each) answer a block at a time through the local runner's own
`answer_batch` -> the driver writes each block's records as it arrives. Ray and its workers are
only imported here and in batch/ray_workers.py, so `dsvl batch --help` never imports Ray.

Ordering: records are written in INPUT order (Ray Data's `preserve_order`), flushed block by
block, so a stopped run leaves a prefix of the input and --resume does the rest. A slow block
holds back the blocks after it (they wait, answered, in Ray's object store); the GPUs keep going.

Nothing lost, retries bounded:
- a bad line, image or generation becomes an error record (exit 1 at the end, as locally);
- an actor whose process dies (killed, OOM) is restarted up to MAX_RESTARTS times and its block is
  retried up to MAX_TASK_RETRIES times (Ray's defaults are unlimited); past that the job stops with
  one line (exit 1); what was written stays, --resume continues;
- a model that cannot load fails the job with the actor's one line (Ray Data gives up on actors
  that die while starting), instead of restarting them forever;
- Ctrl-C / SIGTERM: stop taking blocks, write what has arrived, print the summary (130 / 143).

Which code the workers run: the job ships this process's own dsvl_cli package to every worker
(runtime_env `py_modules`), so the actors run exactly the driver's version, whether dsvl_cli is an
installed package or a source tree (a driver on the cluster's own machine also passes its
sys.path on, so there its tree comes first; tests/test_batch_ray.py checks that the workers run
the tree under test). The workers still need dsvl's dependencies (torch,
transformers...) installed: the same `pip install 'dsvl-cli[ray]'` on every node (or a container
image with it). Each node reads the model from its own cache (DSVL_HOME / HF_HOME on that node).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

from dsvl_cli.batch.records import BadRecord, Record
from dsvl_cli.batch.output import error_record, record_json
from dsvl_cli.errors import DsvlError, UsageError

MAX_RESTARTS = 3  # per engine actor: a process that dies (killed, OOM) is started again this often
MAX_TASK_RETRIES = 3  # a block whose actor died is run again this often
INSTALL = "pip install 'dsvl-cli[ray]'"


def require_ray():
    """The ray module, or the one line saying what to install (exit 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


def runtime_env() -> dict:
    """What every Ray worker of the job gets: this process's dsvl_cli package, shipped with the job."""
    import dsvl_cli

    return {"py_modules": [str(Path(dsvl_cli.__file__).parent)], "excludes": ["__pycache__"]}


def run_ray(todo: list, writer, summary, stop: threading.Event, *, opts, batch_size: int | None,
            workers: int | None, address: str | None, console) -> None:
    """Answer `todo` (Records and BadRecords, in input order) on Ray, writing each block as it arrives."""
    from dsvl_cli.engine import loading
    from dsvl_cli.render import note

    ray = require_ray()
    if not any(isinstance(item, Record) for item in todo):  # nothing for a model: no cluster needed
        _write_bad(todo, writer, summary)
        return
    processor = loading.load_processor(loading.resolve(opts.model, weights=False))  # bad -m: exit 2 here
    with _connected(ray, address, opts.debug), _quiet(opts.debug):
        gpus = int(ray.cluster_resources().get("GPU", 0)) if opts.model.device in ("auto", "cuda") else 0
        workers = workers or max(gpus, 1)
        if gpus and workers > gpus:  # the extra actors would wait for a GPU forever
            raise UsageError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s), one per engine actor")
        block = batch_size or (32 if gpus else 8)
        dataset = _pipeline(ray, _blocks(todo, block), processor, opts, batch_size, workers, gpus)
        per_worker: Counter = Counter()
        started = time.perf_counter()
        iterator = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            for table in iterator:
                _write(table, writer, summary, per_worker)
                if stop.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - Ray's errors wrap ours; one line, the rest with --debug
            from dsvl_cli.batch.output import OutputClosed

            if opts.debug or isinstance(exc, OutputClosed):
                raise
            raise _one_line(exc) from None
        finally:
            close = getattr(iterator, "close", None)  # a generator: closing it shuts the pipeline down
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        seconds = max(time.perf_counter() - started, 1e-9)
        for name, count in sorted(per_worker.items()):
            note(console, f"dsvl batch: worker {name}: {count} records, {count / seconds:.2f} records/s",
                 style="dim")


def _write(table, writer, summary, per_worker: Counter) -> None:
    import json

    for out, failed, tokens, worker in zip(*(table.column(c).to_pylist() for c in ("out", "failed", "tokens",
                                                                                   "worker"))):
        if out is None:  # cut short: left for --resume
            continue
        writer.write(json.loads(out))
        summary.failed += bool(failed)
        summary.done += not failed
        summary.generated_tokens += tokens or 0
        if worker:
            per_worker[worker] += 1


def _write_bad(todo: list, writer, summary) -> None:
    for bad in todo:
        writer.write(error_record(bad, bad.type, bad.message))
        summary.failed += 1


def _blocks(todo: list, size: int) -> list:
    """Arrow tables of `size` rows: the dataset's blocks, in input order (each is one engine call)."""
    import pyarrow as pa

    from dsvl_cli.batch.ray_workers import OUTPUT_COLUMNS

    rows = {name: [] for name in OUTPUT_COLUMNS}
    for idx, item in enumerate(todo):
        rows["idx"].append(idx)
        rows["failed"].append(isinstance(item, BadRecord))
        rows["tokens"].append(0)
        rows["worker"].append("")
        if isinstance(item, Record):
            rows["payload"].append(pickle.dumps((item, [_reachable(s) for s in item.images])))
            rows["out"].append(None)
        else:
            rows["payload"].append(None)
            rows["out"].append(record_json(error_record(item, item.type, item.message)))
    types = {"idx": pa.int64(), "payload": pa.binary(), "out": pa.string(), "failed": pa.bool_(),
             "tokens": pa.int64(), "worker": pa.string()}
    table = pa.table({name: pa.array(values, types[name]) for name, values in rows.items()})
    return [table.slice(start, size) for start in range(0, len(todo), size)]


def _reachable(source: str) -> str:
    """Where a worker reads `source`: a relative path made absolute (workers run in other folders);
    URLs, data: URIs and s3:// addresses as they are. The record keeps the source as written."""
    from dsvl_cli.batch.sources import fs_uri

    if "://" in source or source.startswith("data:") or fs_uri(source):
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else Path.cwd() / path)


def _pipeline(ray, blocks: list, processor, opts, batch_size: int | None, workers: int, gpus: int):
    from dsvl_cli.batch.ray_workers import EngineWorker, prepare_block

    cpus = float(ray.cluster_resources().get("CPU", 1))
    if gpus:  # one GPU per engine actor; image preparation takes the CPUs
        engine = {"num_gpus": 1, "num_cpus": 1}
        prep_cpus = 1.0
    else:  # CPU only (trying it out): leave a quarter of the CPUs to image preparation
        engine = {"num_cpus": cpus * 0.75 / workers}
        prep_cpus = min(1.0, cpus * 0.25)
    dataset = ray.data.from_arrow(blocks)
    dataset = dataset.map_batches(prepare_block, batch_size=None, batch_format="pyarrow",
                                  fn_args=(processor, opts.exact_pixels), num_cpus=prep_cpus)
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the restart bounds yet
        warnings.simplefilter("ignore", DeprecationWarning)
        return dataset.map_batches(
            EngineWorker, batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_args=(opts.model, batch_size), max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES, **engine)


@contextlib.contextmanager
def _connected(ray, address: str | None, debug: bool):
    """Ray for this job: the cluster at `address` (or RAY_ADDRESS), or a local instance started
    here, with runtime_env() for its workers. What this opens, it closes. A connection the calling
    process already holds is used as it is (a test's, or a program's that imports dsvl): Ray takes
    a job's runtime_env only at ray.init, so such a caller passes runtime_env() itself."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    ours = signal.getsignal(signal.SIGTERM)  # ray.init puts its own (exit at once) in place of ours
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=debug,
                 logging_level=logging.INFO if debug else logging.ERROR, runtime_env=runtime_env())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise DsvlError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    finally:
        if threading.current_thread() is threading.main_thread() and ours is not None:
            signal.signal(signal.SIGTERM, ours)  # SIGTERM: stop after the block, summary, exit 143
    try:
        yield
    finally:
        ray.shutdown()


def check_cluster(address: str | None) -> None:
    """Before anything is read or loaded: a `HOST:PORT` head (--ray-address or RAY_ADDRESS) that
    does not answer fails at once, in one line (exit 1): Ray itself retries for minutes.
    (`auto`, `ray://` and `local` are left to Ray; a connection this process holds is used as is.)"""
    import socket

    ray = require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or ""
    if ray.is_initialized():
        return
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise DsvlError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start "
                        "--head` running there? --ray-address / RAY_ADDRESS)") from None


@contextlib.contextmanager
def _quiet(debug: bool):
    """Ray Data's progress bars and logs off, input order on. Ray prints the errors its workers
    report (a task retried after its actor died, with a traceback) on sys.stdout, which may carry
    the records: they are dropped (to stderr with --debug); what failed is reported in one line.
    Everything is put back afterwards (tests share one process)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = debug
    loggers = {name: logging.getLogger(name) for name in ("ray", "ray.data")}
    levels = {name: log.level for name, log in loggers.items()}
    if not debug:
        for log in loggers.values():
            log.setLevel(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sys.stderr if debug else sink):
            yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        for name, log in loggers.items():
            log.setLevel(levels[name])


def _one_line(exc: Exception) -> DsvlError:
    """The one line for a failed Ray job: the engine actor's own message when it could not load the
    model, else the first line of Ray's error."""
    from dsvl_cli.errors import ModelError

    text = str(exc)
    found = re.search(r"WorkerLoadError: (.+)", text)
    if found:
        return ModelError(f"{found.group(1).strip()} (on a Ray worker; the job stopped)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return DsvlError(f"the Ray job failed: {first} (records written so far are kept; "
                     "rerun with --resume -o FILE)")
