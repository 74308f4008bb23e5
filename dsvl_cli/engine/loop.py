"""The warm engine: one loop that admits requests at every decode step and retires rows at once.

Continuous batching, as vLLM's scheduler and llama.cpp's server slots do it, driven through the
model's own forward (transformers 5.25's continuous batching takes token ids only: it has no place
for DeepSeek-VL's picture features). One thread owns the model. Each turn of the loop:
1. **admit** waiting requests, oldest first, while there are free rows and the KV they may grow to
   fits the budget: each is prefilled alone (batch 1), its pictures' features from the image-feature
   cache (engine/features.py), its prompt's KV from the prefix cache where an earlier row left it
   (engine/prefix_cache.py); its first token is chosen, and its KV joins the running rows
   (engine/kv.py: left padding, per-row positions);
2. **decode** one token for every running row in one forward pass; each row picks its own token
   with its own processors (engine/rows.py);
3. **retire** each row that ended (EOS, length, a stop string, its stop event): its Result goes out
   at once, its KV into the prefix cache, and its row out of the batch.

`--choices` and decisions requests are scored (engine/scoring.py, engine/decisions.py) on this
thread between steps: one prefill each, nothing generated.

Out of memory in a decode step: the prefix and feature caches are dropped and the step runs again;
still out of memory, the newest row is preempted (back to the front of the queue when it has shown
nothing yet, else ended with the error). Out of memory in a prefill: the caches are dropped and the
request waits until rows finish (or fails alone when nothing else runs).

Past `max_waiting` requests waiting, `submit` raises QueueFull (the server's 429).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator

from dsvl_cli.engine import decisions, features as pictures_of, scoring
from dsvl_cli.engine.core import Generation
from dsvl_cli.engine.features import ImageFeatureCache
from dsvl_cli.engine.kv import RowsKV
from dsvl_cli.engine.meters import Meters
from dsvl_cli.engine.prefill import prefill
from dsvl_cli.engine.prefix_cache import PrefixCache
from dsvl_cli.engine.rows import END, Request, Row, choose_all
from dsvl_cli.errors import DsvlError, GenerationError
from dsvl_cli.results import Chunk, Result

MAX_WAITING = 1024  # requests queued behind the running rows before the server answers 429
PREFILLS_PER_STEP = 4  # admitted between two decode steps (each prefill stalls the running rows)
log = logging.getLogger("dsvl.engine")


class QueueFull(GenerationError):
    """More requests waiting than the loop admits (the server answers 429; a caller that keeps its
    own bound, as batch does, never sees it: and if it did, it is an error, never a lost record)."""

    def __init__(self, bound: int):
        super().__init__(f"{bound} requests are already waiting for the engine")


def _oom_types() -> tuple:
    import torch

    return (torch.OutOfMemoryError,)


class EngineLoop:
    def __init__(self, engine, *, max_rows: int, max_waiting: int = MAX_WAITING, cache_bytes: int,
                 feature_bytes: int, kv_budget: int):
        self.engine = engine
        self.max_rows, self.max_waiting, self.kv_budget = max(1, max_rows), max(0, max_waiting), kv_budget
        self.prefix = PrefixCache(cache_bytes)
        self.features = ImageFeatureCache(feature_bytes)
        self.meters = Meters()
        self.rows: list[Row] = []
        self._kv = RowsKV(engine.model.config)
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dsvl-engine-loop", daemon=True)
        self._bytes_per_token = kv_bytes_per_token(engine.model)

    # -- callers' side (any thread) -------------------------------------------------------------
    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, request: Request) -> Request:
        with self._cond:
            if self._closed:
                raise GenerationError("the engine is shutting down")
            if len(self._waiting) >= self.max_waiting + (0 if self.rows else 1):
                raise QueueFull(self.max_waiting)
            self._waiting.append(request)
            self.meters.waiting = len(self._waiting)
            self._cond.notify()
        return request

    def stream(self, conversation, gen, *, stop_event: threading.Event | None = None) -> Iterator[Chunk]:
        """One request from a plain thread: TextChunks, then its Result (its error is raised)."""
        items: queue.Queue = queue.Queue()
        request = self.submit(Request(conversation, gen, items.put, outer=stop_event))
        try:
            while (item := items.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.stop.set()

    def close(self, timeout: float) -> None:
        """Stop what runs or waits (each ends at its next step) and wait for the thread."""
        with self._cond:
            self._closed = True
            for request in [*self._waiting, *(row.request for row in self.rows)]:
                request.stop.set()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop's thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self.rows and not self._closed:
                    self._cond.wait()
                if self._closed and not self.rows:
                    for request in self._waiting:
                        request.end(GenerationError("the server is shutting down"))
                    self._waiting.clear()
                    return
            try:
                self._admit()
                if self.rows:
                    self._step()
            except Exception as exc:  # a bug or a torch failure: every running row gets it, the loop goes on
                log.error("engine step failed:\n%s", traceback.format_exc().rstrip())
                error = GenerationError(f"generation failed: {type(exc).__name__}: {exc}")
                for row in self.rows:
                    row.request.end(error)
                self.rows, self._kv = [], RowsKV(self.engine.model.config)
            self._update_meters()

    def _next_waiting(self) -> Request | None:
        with self._cond:
            if not self._waiting or len(self.rows) >= self.max_rows:
                return None
            request = self._waiting[0]
            if self.rows and not request.cancelled and not self._fits(request):
                return None
            self._waiting.popleft()
            self.meters.waiting = len(self._waiting)
            return request

    def _fits(self, request: Request) -> bool:
        """Whether the KV of the running rows at their longest, and this one's, fit the budget."""
        need = sum(len(row.prompt_ids) + row.plan.max_new_tokens for row in self.rows)
        need += self.engine.count_tokens(request.conversation) + request.gen.max_new_tokens
        return need * self._bytes_per_token <= self.kv_budget

    def _admit(self) -> None:
        for _ in range(PREFILLS_PER_STEP):
            request = self._next_waiting()
            if request is None:
                return
            if request.cancelled:  # a caller's shared stop (Ctrl-C in batch): interrupted, left for --resume
                outer = request.outer is not None and request.outer.is_set()
                request.end(Result(answer="", finish_reason="interrupted") if outer
                            else GenerationError("cancelled before it started"))
                continue
            self.meters.requests_total += 1
            if scoring.wanted(request.gen) or decisions.wanted(request.gen):  # nothing to generate
                self._score(request)
                continue
            try:
                row = self._prefill(request)
            except DsvlError as err:
                request.end(err)
                continue
            except _oom_types():
                self._drop_caches()
                if self.rows:  # room comes back as rows finish
                    with self._cond:
                        self._waiting.appendleft(request)
                    return
                request.end(GenerationError(f"out of memory on {self.engine.device} while reading the prompt; "
                                            "try fewer images or a shorter prompt"))
                continue
            except Exception as exc:  # a bug or a bad input past the front ends' checks: this request only
                log.error("prefill failed:\n%s", traceback.format_exc().rstrip())
                request.end(GenerationError(f"generation failed: {type(exc).__name__}: {exc}"))
                continue
            if row.finish is not None:
                self._retire_alone(row)
            self._update_meters()

    def _prefill(self, request: Request) -> Row:
        import torch

        engine, started = self.engine, time.perf_counter()
        conversation = request.conversation
        prepared = [pictures_of.prepare(engine, loaded.image) for loaded in conversation.images]
        image_s = sum(p.prep_s for p in prepared) + sum(i.load_s for i in conversation.images)
        text = engine.expand_placeholders(engine.render(conversation))
        ids = engine.tokenizer(text, return_tensors="pt")["input_ids"].to(engine.model.device)
        plan = Generation.plan(engine, request.gen, prompt_tokens=int(ids.shape[1]), started=started,
                               formats=[request.gen.answer_format])
        digests = [p.digest for p in prepared]
        row = Row(engine, request, plan, ids, digests, image_s)
        with torch.inference_mode():
            out, keep = prefill(engine, row.prompt_ids, prepared, self.prefix, self.features)
        row.cached = keep
        self.meters.prompt_tokens_total += len(row.prompt_ids)
        self.meters.prompt_tokens_cached_total += keep
        row.push(row.choose(out.logits[:, -1].to(copy=True, dtype=torch.float32)))
        self.meters.ttft.observe(time.perf_counter() - request.submitted)
        self.meters.generation_tokens_total += 1
        if row.finish is None:
            self._kv.join(out.cache, len(row.prompt_ids))
            self.rows.append(row)
            request.shared = max(request.shared, len(self.rows))
        else:
            row.kv_cache, request.shared = out.cache, max(request.shared, 1)
        return row

    def _step(self) -> None:
        import torch

        for row in self.rows:
            if row.request.cancelled:
                row.interrupt()
        self._retire()
        if not self.rows:
            return
        for row in self.rows:
            row.request.shared = max(row.request.shared, len(self.rows))
        device = self.engine.model.device
        tokens = torch.tensor([[row.last] for row in self.rows], device=device)
        positions = torch.tensor([[row.real] for row in self.rows], device=device)
        mask = self._kv.step_mask()
        try:
            out = self._forward(tokens, mask, positions)
        except _oom_types():
            self._drop_caches()
            try:
                out = self._forward(tokens, mask, positions)
            except _oom_types():
                self._preempt_newest()
                return
        self._kv.stepped(mask)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        for row, token in zip(self.rows, choose_all(self.rows, logits)):
            row.push(token)
        self.meters.generation_tokens_total += len(self.rows)
        self._retire()

    def _forward(self, tokens, mask, positions):
        import torch

        with torch.inference_mode():
            return self.engine.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                                     cache=self._kv.cache, use_cache=True)

    def _retire(self) -> None:
        done = [k for k, row in enumerate(self.rows) if row.finish is not None]
        if not done:
            return
        for k in done:
            row = self.rows[k]
            row.result()
            self.prefix.insert(row.kv_ids(), row.digests, self._kv.row_pairs(k))
        keep = [k for k, row in enumerate(self.rows) if row.finish is None]
        self.rows = [self.rows[k] for k in keep]
        self._kv.keep(keep)
        self._update_meters()

    def _retire_alone(self, row: Row) -> None:
        """A row that ended at its first token (EOS, max_new_tokens 1): it never joined the batch."""
        from dsvl_cli.engine.kv import pairs_of

        row.result()
        self.prefix.insert(row.kv_ids(), row.digests, pairs_of(row.kv_cache))
        row.kv_cache = None

    def _score(self, request: Request) -> None:
        try:
            if decisions.wanted(request.gen):  # the input's KV and pictures from (and into) the caches
                items = decisions.stream(self.engine, request.conversation, request.gen,
                                         prefix=self.prefix, features=self.features)
            else:
                items = self.engine.stream(request.conversation, request.gen)  # its scoring branch
            for item in items:
                if isinstance(item, Result):
                    self.meters.prompt_tokens_total += item.stats.prompt_tokens
                    self.meters.prompt_tokens_cached_total += item.stats.cached_tokens or 0
                request.sink(item)
            request.sink(END)
        except DsvlError as err:
            request.end(err)
        except Exception as exc:
            log.error("scoring failed:\n%s", traceback.format_exc().rstrip())
            request.end(GenerationError(f"scoring failed: {type(exc).__name__}: {exc}"))

    def _drop_caches(self) -> None:
        self.prefix.clear()
        self.features.clear()
        if self.engine.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _preempt_newest(self) -> None:
        """Out of memory with the caches empty: the newest row leaves, to wait again or fail."""
        row = self.rows[-1]
        self.meters.preemptions_total += 1
        if row.text.emitted:
            row.request.end(GenerationError(f"out of memory on {self.engine.device} with {len(self.rows)} "
                                            "answers running; try a smaller --max-new-tokens"))
        else:
            with self._cond:
                self._waiting.appendleft(row.request)
        self.rows.pop()
        self._kv.keep(list(range(len(self.rows))))

    def _update_meters(self) -> None:
        m = self.meters
        m.running = len(self.rows)
        m.image_cache_hits_total, m.image_cache_misses_total = self.features.hits, self.features.misses
        m.prefix_cache_bytes, m.prefix_cache_evictions_total = self.prefix.bytes, self.prefix.evicted
        m.kv_cache_bytes = self._kv.nbytes + self.prefix.bytes


def default_budgets(device: str) -> dict[str, int]:
    """Memory for the prefix cache, the image-feature cache and the running rows' KV, from what is
    free now (after the model loaded): on CUDA a fifth, 512 MiB and three fifths of the free GPU
    memory; elsewhere a tenth (at most 2 GiB), 256 MiB and two fifths of the available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return {"cache_bytes": free // 5, "feature_bytes": min(512 * 2**20, free // 20), "kv_budget": free * 3 // 5}
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cache_bytes": min(2 * 2**30, available // 10), "feature_bytes": 256 * 2**20,
            "kv_budget": available * 2 // 5}


def kv_bytes_per_token(model) -> int:
    """Keys and values of one token over every layer."""
    text = model.config.text_config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * model.dtype.itemsize
