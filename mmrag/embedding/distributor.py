"""distributor: who runs the embedding runner over the rows -- this process, or a Ray cluster.

``sequential`` (default) builds one runner here and feeds it one batch after another; it can
reuse an already loaded encoder and take an in-process writer (the local path commits straight
into the index). ``ray`` hands the rows to Ray Data and maps them with ``map_batches`` over a
pool of actors (a callable class, so each actor loads the encoder once); each actor writes its
shards itself, so on a cluster the output folder (and the images) must be on storage every node
sees.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any, Callable, Protocol, Sequence

from mmrag.embedding.reader import rows_batch
from mmrag.registry import Registry


class Distributor(Protocol):
    name: str

    def run(self, records: Sequence[dict], runner_cls: type, runner_kwargs: dict[str, Any], batch_size: int,
            encoder=None, writer=None, progress: bool = True, desc: str = "embedding",
            on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Map ``records`` in batches of at most ``batch_size`` rows with
        ``runner_cls(**runner_kwargs)`` (plus ``encoder`` and ``writer`` where the runner lives in
        this process); return one writer summary per batch."""


DISTRIBUTORS: Registry[Distributor] = Registry("distributor")


def create_distributor(name: str = "sequential", **options) -> Distributor:
    return DISTRIBUTORS.create(name, **options)


@DISTRIBUTORS.register("sequential")
class SequentialDistributor:
    """In-process: one runner (reusing an already loaded encoder, and the given writer), batch by batch."""

    name = "sequential"

    def __init__(self, **_ignored):
        pass

    def run(self, records, runner_cls, runner_kwargs, batch_size, encoder=None, writer=None, progress=True,
            desc="embedding", on_progress=None) -> list[dict]:
        if not records:
            return []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(records), desc=desc, unit="img", file=sys.stderr)
        # the bar moves per embedding mini-batch (the mapper reports), not per committed batch
        out = []
        try:
            runner = runner_cls(**runner_kwargs, encoder=encoder, writer=writer,
                                on_rows=bar.update if bar is not None else None)
            for a in range(0, len(records), batch_size):
                part = records[a : a + batch_size]
                res = runner(rows_batch(part))
                out.extend(dict(zip(res, vals)) for vals in zip(*(v.tolist() for v in res.values())))
                if on_progress is not None:
                    on_progress(a + len(part), len(records))
        finally:
            if bar is not None:
                bar.close()
        return out


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable ``host:port`` (ray.init would retry for minutes)."""
    import socket

    from mmrag.errors import MmragError

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MmragError(f"--ray-address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise MmragError(f"cannot start or reach Ray at {address}: {e}") from None


def start_ray(address: str | None = None, attempts: int = 3, **kw) -> None:
    """``ray.init(address, **kw)``, retried when a *local* runtime times out starting up.

    Ray waits a fixed 30 s for its raylet to register ("The current node timed out during
    startup"); on a loaded 2-core machine that is not always enough, and a second try after a
    clean shutdown usually is. Other errors (a bad address, a cluster that is down) are raised
    at once."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **kw)
            return
        except Exception as e:
            if address is not None or "timed out during startup" not in str(e) or attempt == attempts:
                raise
            logging.getLogger(__name__).warning("Ray start-up timed out (try %d of %d); retrying", attempt, attempts)
            ray.shutdown()


@DISTRIBUTORS.register("ray")
class RayDistributor:
    """Ray Data: ``from_items`` -> ``map_batches(EmbeddingRunner, concurrency=num_workers)``.

    ``address``: None starts a local Ray runtime with ``num_workers`` CPUs (and stops it after);
    ``"auto"`` joins the cluster this machine belongs to; ``"ray://head:10001"`` connects
    through Ray Client. When Ray is already initialised (e.g. by the caller) it is used as is.
    ``runtime_env`` is passed to ``ray.init`` (e.g. ``{"pip": ["mmrag"]}`` or ``py_modules``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int = 2, cpus_per_worker: float = 1.0,
                 runtime_env: dict[str, Any] | None = None, object_store_memory: int | None = None):
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.address = address
        self.num_workers = int(num_workers)
        self.cpus_per_worker = float(cpus_per_worker)
        self.runtime_env = runtime_env
        self.object_store_memory = object_store_memory

    def run(self, records, runner_cls, runner_kwargs, batch_size, encoder=None, writer=None, progress=True,
            desc="embedding", on_progress=None) -> list[dict]:
        from mmrag.errors import MmragError

        if writer is not None:  # actors live in other processes: they write shards themselves
            raise ValueError("the ray distributor takes no in-process writer; its actors write shards")
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError as e:
            raise MmragError(f"--engine ray needs Ray Data: pip install 'ray[data]==2.60.0' ({e})") from None
        if not records:
            return []
        started = False
        if not ray.is_initialized():
            _probe(self.address)
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "runtime_env": self.runtime_env, "logging_level": logging.WARNING,
                                  "configure_logging": True}
            if self.address is None:  # a local runtime sized for the pool
                kw["num_cpus"] = max(1, math.ceil(self.num_workers * self.cpus_per_worker))
                if self.object_store_memory:
                    kw["object_store_memory"] = int(self.object_store_memory)
            try:
                start_ray(self.address, **kw)
            except Exception as e:  # ConnectionError, bad address, ...
                raise MmragError(f"cannot start or reach Ray at {self.address or 'a local runtime'}: {e}") from None
            started = True
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = progress
            ctx.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            # at least two shards per worker when there is enough work, so no actor sits idle
            size = max(1, min(batch_size, math.ceil(len(records) / (2 * self.num_workers))))
            ds = ray.data.from_items(list(records), override_num_blocks=math.ceil(len(records) / size))
            out = ds.map_batches(
                runner_cls,
                fn_constructor_kwargs=runner_kwargs,
                batch_size=size,
                batch_format="numpy",
                concurrency=self.num_workers,
                num_cpus=self.cpus_per_worker,
            )
            return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in out.take_all()]
        finally:
            if started:
                ray.shutdown()
