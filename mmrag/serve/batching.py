"""Dynamic micro-batching: concurrent requests share one model call.

A :class:`MicroBatcher` owns one worker thread and a queue. ``await batcher.submit(item)`` puts
the item on the queue and waits for its result. The worker takes the first waiting item, then
keeps collecting for at most ``max_wait_ms`` (or until ``max_batch`` items), and calls
``fn(items)`` once -- e.g. one ``embed_texts`` over 20 queries instead of 20 calls, which on a
small CPU is several times cheaper per query (one tokenizer pass, one matrix product per layer).
Requests that arrive while a batch runs wait in the queue and form the next batch, so under load
the batches grow by themselves and when idle a lone request waits ``max_wait_ms`` at most.

``fn`` returns one result per item, in order; a result that is an ``Exception`` is raised to that
item's caller only, and an exception raised by ``fn`` itself goes to every caller of the batch.
``max_batch=1`` turns batching off (requests are served one at a time, in arrival order), which
is how the load benchmark measures the difference. ``workers`` threads take batches from the same
queue (e.g. one per core for a model whose calls release the GIL); ``on_start`` runs first in
each worker thread (per-thread settings such as OpenMP thread counts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["MicroBatcher", "BatcherClosedError"]


class BatcherClosedError(RuntimeError):
    """The batcher was closed (server shutting down) before the item was served."""


@dataclass
class _Job:
    item: Any
    future: concurrent.futures.Future
    queued_at: float


class MicroBatcher(Generic[T, R]):
    """Collects concurrent ``submit`` calls into batches for ``fn`` (run on its own thread).

    ``on_batch(size, wait_s, run_s)`` is called after every batch (for metrics).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R | Exception]], max_batch: int = 64,
                 max_wait_ms: float = 2.0, name: str = "batcher",
                 on_batch: Callable[[int, float, float], None] | None = None, workers: int = 1,
                 on_start: Callable[[], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.name = name
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._on_start = on_start
        self._threads = [threading.Thread(target=self._run, name=f"mmrag-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def _put(self, item: T) -> concurrent.futures.Future:
        if self._closed:
            raise BatcherClosedError(f"{self.name} is closed")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(item, fut, time.perf_counter()))
        return fut

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (or its exception) without blocking the loop."""
        return await asyncio.wrap_future(self._put(item))

    def call(self, item: T) -> R:
        """Blocking form of :meth:`submit`, for code running in a worker thread."""
        return self._put(item).result()

    def close(self) -> None:
        """Stop the worker after the batch in progress; waiting callers get BatcherClosedError."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    # ------------------------------------------------------------------ worker thread
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            try:  # take what is already waiting without sleeping
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            start = time.perf_counter()
            wait = start - min(j.queued_at for j in jobs)
            try:
                results: Sequence[Any] = self.fn([j.item for j in jobs])
                if len(results) != len(jobs):
                    raise RuntimeError(f"{self.name}: fn returned {len(results)} results for {len(jobs)} items")
            except BaseException as e:  # noqa: BLE001 - every caller must hear about it
                results = [e] * len(jobs)
            run = time.perf_counter() - start
            for job, res in zip(jobs, results):
                _resolve(job.future, res)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(jobs), wait, run)
                except Exception:  # metrics must never break serving
                    pass
        # Fail whatever is still queued, leaving the other workers' stop signals in place.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            _resolve(job.future, BatcherClosedError(f"{self.name} is closed"))


def _resolve(fut: concurrent.futures.Future, res: Any) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    if isinstance(res, BaseException):
        fut.set_exception(res)
    else:
        fut.set_result(res)
