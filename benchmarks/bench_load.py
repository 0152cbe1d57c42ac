"""Load test of ``mmrag serve`` on loopback: closed-loop clients, mixed text and image search.

    python benchmarks/bench_load.py [--size 100000] [--clients 32] [--duration 30] [--image-share 0.1]
                                    [--modes batched unbatched] [--text-modes auto vector]
                                    [--keyword-cache on off] [--rates 20 40 60]
                                    [--json benchmarks/results/load.json]

The index: a 100k-image index cannot be embedded from real images on this machine, so it holds
the real effnet-minilm embeddings of all 8,091 Flickr8k images (cached, keyed by the bridge, as in
``bench_query.py``), resampled with small Gaussian noise up to ``--size`` vectors (each row carries
its source image's captions and file, so results look real). It is built once and cached under
``cache_dir()/bench_load``; the default FAISS store picks IVF-SQ8 at this size.

The server: ``mmrag serve`` in its own process (one uvicorn worker), once with micro-batching and
once without (``--no-batching``: every request embedded and searched on its own, one at a time),
in the same run. The clients: ``--clients`` closed-loop clients (each sends its next request as
soon as the previous answer arrives) for ``--duration`` seconds after a warm-up, each on its own
keep-alive connection. A share ``--image-share`` of requests are image searches (a Flickr8k
test/dev image sent as base64 JSON, embedded by EfficientNet on the server); the rest are text
searches with distinct Flickr8k captions (all splits), never repeated within a run (there is no result cache
anyway). ``k=10``. The client is a minimal HTTP/1.1 client on asyncio streams, so the load
generator costs little CPU on the same cores as the server. Reported per mode and request kind:
throughput, p50/p95/p99 latency, errors (non-200 answers, resets, timeouts), the server's mean
micro-batch sizes (from its ``/metrics``) and the CPU it got (cores' worth, from /proc: on a
machine shared with other jobs this is below the core count).

Closed-loop clients with no pause measure capacity, not user latency: by Little's law their mean
latency is clients / throughput. ``--rates`` adds open-loop runs (Poisson arrivals at fixed rates,
batching on; latency counted from the planned arrival time, so queueing is not hidden) to find
the rate the server sustains within a latency target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import write_results  # noqa: E402

from mmrag.paths import cache_dir  # noqa: E402

NOISE = 0.02  # per-dimension std of the resampling noise (as bench_query.py)
K = 10


# ---------------------------------------------------------------------- index


def flickr8k_embeddings(data_dir: Path):
    """(vectors of all Flickr8k images, corpus), cached by the bridge as in bench_query.py."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders import create_encoder

    enc = create_encoder("effnet-minilm")
    corpus = read_corpus("flickr8k", data_dir)
    key = hashlib.sha256(enc.bridge.W.tobytes() + repr(enc.recipe.views).encode()).hexdigest()[:12]
    cache = cache_dir() / f"flickr8k_all_effnet_minilm_{key}.npy"
    if cache.exists():
        base = np.load(cache)
    else:
        print(f"embedding {len(corpus.items)} Flickr8k images once (minutes) -> {cache}", file=sys.stderr)
        base = enc.embed_images([it.path for it in corpus.items], progress=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, base)
        os.replace(tmp, cache)
    return base, corpus, key


def build_load_index(data_dir: Path, size: int) -> Path:
    """The resampled index (built once, cached); returns its directory."""
    from mmrag.encoders.base import l2_normalize
    from mmrag.index.collection import Collection, IndexManifest

    from mmrag.encoders import create_encoder

    base, corpus, key = flickr8k_embeddings(data_dir)
    # each row stores its text->image hubness prior, as `mmrag index` does (an index without
    # them pays for computing them per query)
    out = cache_dir() / "bench_load" / f"flickr8k-resampled-{key}-{size}-prior"
    if (out / "READY").exists():
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(base), size)
    encoder = create_encoder("effnet-minilm")
    name, options = encoder.spec()  # the manifest names the bridge, so the server loads the same one
    man = IndexManifest(encoder=name, encoder_options=options, dim=base.shape[1],
                        sources=[f"{data_dir} (resampled to {size} with noise {NOISE})"])
    col = Collection.create_or_open(out, man)
    step = 20_000
    for a in range(0, size, step):
        r = rows[a : a + step]
        x = l2_normalize(base[r] + rng.normal(scale=NOISE, size=(len(r), base.shape[1])).astype(np.float32))
        meta = []
        priors = encoder.image_prior(x)
        for n, j in enumerate(r):
            it = corpus.items[j]
            meta.append({"captions": it.captions, "path": str(Path(it.path).resolve()), "split": it.split,
                         "source": it.id})
            if priors is not None:
                meta[-1]["prior"] = round(float(priors[n]), 6)
        col.images.add([f"r{a + i}" for i in range(len(r))], x, meta)
    col.save()
    col.close()
    (out / "READY").write_text("ok\n")
    print(f"built {out} ({size} vectors) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return out


# ---------------------------------------------------------------------- client


class Conn:
    """One keep-alive HTTP/1.1 connection: POST JSON, read the answer (Content-Length bodies)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None
        try:
            return await self._post(path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            # the server closed an idle keep-alive connection (uvicorn: after 5 s): like any
            # pooling HTTP client, reconnect and send once more
            self.close()
            return await self._post(path, body)

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Workload:
    """What the clients send: distinct text queries (never repeated) and, with probability
    ``image_share``, an image search."""

    def __init__(self, texts: list[str], images: list[str], image_share: float, seed: int = 0,
                 text_mode: str = "auto"):
        self.rng = random.Random(seed)
        self.texts = iter(texts)
        self.images = images
        self.image_share = image_share
        self.text_mode = text_mode

    def next(self) -> tuple[str, bytes]:
        if self.rng.random() < self.image_share:
            return "image", json.dumps({"image": self.rng.choice(self.images), "k": K}).encode()
        try:
            q = next(self.texts)
        except StopIteration:
            raise RuntimeError("ran out of distinct text queries: lower --duration") from None
        return "text", json.dumps({"text": q, "k": K, "mode": self.text_mode}).encode()


class Recorder:
    def __init__(self, t_measure: float, t_end: float):
        self.t_measure, self.t_end = t_measure, t_end
        self.records: list[tuple[str, float, float, bool]] = []  # kind, start, latency, ok
        self.errors: dict[str, int] = {}

    async def send(self, conn: Conn, kind: str, body: bytes, t_sched: float) -> None:
        """One request; latency counts from ``t_sched`` (open loop: from the planned send time)."""
        counted = t_sched >= self.t_measure
        ok = False
        try:
            status, data = await asyncio.wait_for(conn.post("/api/search", body), timeout=30)
            ok = status == 200 and len(json.loads(data)["results"]) == K
            if not ok and counted:
                key = f"HTTP {status}" if status != 200 else "short result"
                self.errors[key] = self.errors.get(key, 0) + 1
        except (OSError, asyncio.TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError) as e:
            if counted:
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            conn.close()
        t1 = time.perf_counter()
        if counted and t1 <= self.t_end:
            self.records.append((kind, t_sched, t1 - t_sched, ok))


async def run_closed(host: str, port: int, clients: int, duration: float, warmup: float, work: Workload) -> dict:
    """``clients`` closed-loop clients: each sends its next request when the previous returns."""
    t0 = time.perf_counter()
    rec = Recorder(t0 + warmup, t0 + warmup + duration)

    async def client() -> None:
        conn = Conn(host, port)
        while time.perf_counter() < rec.t_end:
            kind, body = work.next()
            await rec.send(conn, kind, body, time.perf_counter())
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"records": rec.records, "errors": rec.errors, "duration": duration}


async def run_open(host: str, port: int, rate: float, duration: float, warmup: float, work: Workload,
                   max_conns: int = 256) -> dict:
    """Open loop: requests arrive as a Poisson process of ``rate`` per second whatever the server
    does (latency from the planned arrival, so a slow server cannot slow the arrivals down)."""
    pool: asyncio.LifoQueue = asyncio.LifoQueue()  # warm connections first
    for _ in range(max_conns):
        pool.put_nowait(Conn(host, port))
    t0 = time.perf_counter()
    rec = Recorder(t0 + warmup, t0 + warmup + duration)
    arrivals = random.Random(7)

    async def one(t_sched: float, kind: str, body: bytes) -> None:
        conn = await pool.get()
        try:
            await rec.send(conn, kind, body, t_sched)
        finally:
            pool.put_nowait(conn)

    tasks = []
    t_next = t0
    while t_next < rec.t_end:
        delay = t_next - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        kind, body = work.next()
        tasks.append(asyncio.create_task(one(t_next, kind, body)))
        t_next += arrivals.expovariate(rate)
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    return {"records": rec.records, "errors": rec.errors, "duration": duration}


def summarize(res: dict) -> dict:
    recs = res["records"]
    out = {"duration_s": res["duration"], "requests": len(recs),
           "throughput_rps": round(len(recs) / res["duration"], 1),
           "errors": sum(res["errors"].values()), "error_kinds": res["errors"]}
    for kind in ("all", "text", "image"):
        lat = np.asarray([r[2] for r in recs if (kind == "all" or r[0] == kind) and r[3]]) * 1000
        if not len(lat):
            continue
        out[kind] = {"n": int(len(lat)), "rps": round(len(lat) / res["duration"], 1),
                     "p50_ms": round(float(np.percentile(lat, 50)), 1),
                     "p95_ms": round(float(np.percentile(lat, 95)), 1),
                     "p99_ms": round(float(np.percentile(lat, 99)), 1),
                     "mean_ms": round(float(lat.mean()), 1)}
    return out


# ---------------------------------------------------------------------- server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, batching: bool, extra: list[str],
                 env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmrag.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--batching" if batching else "--no-batching", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start within 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums, counts = {}, {}
    for line in text.splitlines():
        for name, target in (("mmrag_batch_size_sum", sums), ("mmrag_batch_size_count", counts)):
            if line.startswith(name + "{"):
                batcher = line.split('batcher="', 1)[1].split('"', 1)[0]
                target[batcher] = float(line.split()[-1])
    return {b: round(sums[b] / counts[b], 2) for b in sums if counts.get(b)}


def warm(port: int, texts: list[str], images: list[bytes]) -> None:
    """A few sequential requests so models and caches are loaded before timing."""
    for body in [{"text": t, "k": K} for t in texts] + [{"image": im, "k": K} for im in images]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/search", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/flickr8k"))
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--image-share", type=float, default=0.1, help="Share of requests that are image searches.")
    ap.add_argument("--modes", nargs="*", default=["batched", "unbatched"], choices=["batched", "unbatched"],
                    help="Closed-loop runs: with and/or without micro-batching.")
    ap.add_argument("--rates", nargs="*", type=float, default=[],
                    help="Also open-loop runs (batched) at these arrival rates (requests/s).")
    ap.add_argument("--text-modes", nargs="*", default=["auto"], choices=["auto", "vector", "hybrid", "keyword"],
                    help="The search mode text queries ask for, one closed-loop run each (auto: hybrid on a "
                         "captioned index).")
    ap.add_argument("--keyword-cache", nargs="*", default=["on"], choices=["on", "off"],
                    help="The server's per-word keyword cache (off: MMRAG_KEYWORD_CACHE_ROWS=0, FTS5's own "
                         "ranking per query), one run each.")
    ap.add_argument("--server-opt", action="append", default=[], help="Extra `mmrag serve` option (repeatable).")
    ap.add_argument("--json", default="benchmarks/results/load.json")
    a = ap.parse_args()

    # a SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the server subprocess is stopped too
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    data_dir = Path(a.data_dir)
    index = build_load_index(data_dir, a.size)
    from mmrag.corpus.readers import read_corpus

    everything = read_corpus("flickr8k", data_dir).items
    texts = list(dict.fromkeys(c for it in everything for c in it.captions))  # ~40k distinct captions
    random.Random(1).shuffle(texts)
    held = [it for it in everything if it.split in ("dev", "test")]
    images = [base64.b64encode(Path(it.path).read_bytes()).decode() for it in held[:200]]
    results: dict = {}

    def measure(label: str, batching: bool, run, env_extra: dict[str, str]) -> None:
        port = free_port()
        t = time.perf_counter()
        proc = start_server(index, port, batching, a.server_opt, env_extra)
        startup = time.perf_counter() - t
        try:
            warm(port, texts[-20:], images[-3:])
            load0, cpu0, t0 = os.getloadavg()[0], cpu_seconds(proc.pid), time.perf_counter()
            res = asyncio.run(run(port))
            cpu = cpu_seconds(proc.pid) - cpu0
            wall = time.perf_counter() - t0
            summary = summarize(res)
            summary["mean_batch_size"] = batch_stats(port)
            summary["server_startup_s"] = round(startup, 1)
            # how much CPU the server got: on a 2-core machine shared with other jobs, < 2 cores
            summary["server_cpu_cores"] = round(cpu / wall, 2)
            summary["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        finally:
            stop_server(proc)
        results[label] = summary
        print(f"{label}: {json.dumps({k: v for k, v in summary.items() if k != 'error_kinds'})}", file=sys.stderr)

    texts_left = texts[:-20]
    for mode in a.modes:
        for text_mode in a.text_modes:
            for cache in a.keyword_cache:
                work = Workload(texts_left, images, a.image_share, text_mode=text_mode)
                label = mode + ("" if text_mode == "auto" else f"/{text_mode}") + ("" if cache == "on" else "/nocache")
                measure(label, mode == "batched",
                        lambda port, w=work: run_closed("127.0.0.1", port, a.clients, a.duration, a.warmup, w),
                        {} if cache == "on" else {"MMRAG_KEYWORD_CACHE_ROWS": "0"})
    for rate in a.rates:
        work = Workload(texts_left, images, a.image_share, seed=int(rate))
        measure(f"open@{rate:g}", True, lambda port, w=work, r=rate: run_open("127.0.0.1", port, r, a.duration,
                                                                              a.warmup, w), {})

    res = {
        "index": {"size": a.size, "source": "Flickr8k effnet-minilm embeddings resampled with noise",
                  "noise_std": NOISE},
        "clients": a.clients, "text_modes": a.text_modes, "keyword_cache": a.keyword_cache, "duration_s": a.duration, "warmup_s": a.warmup, "image_share": a.image_share,
        "k": K, "results": results,
    }
    print(f"\n{a.clients} closed-loop clients, {a.duration:g} s, {a.size} images, "
          f"{100 * a.image_share:g}% image searches, k={K}")
    head = f"{'mode':<18}{'kind':<7}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu':>6}"
    print(head)
    for mode, s in results.items():
        for kind in ("all", "text", "image"):
            if kind in s:
                d = s[kind]
                print(f"{mode:<18}{kind:<7}{d['rps']:>8}{d['p50_ms']:>9}{d['p95_ms']:>9}{d['p99_ms']:>9}"
                      f"{s['errors'] if kind == 'all' else '':>8}{s['server_cpu_cores'] if kind == 'all' else '':>6}")
        print(f"{'':<18}mean batch sizes: {s['mean_batch_size']}")
    write_results(a.json, res)


if __name__ == "__main__":
    main()
