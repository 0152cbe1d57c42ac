"""The caption datastore of retrieval-augmented captioning (mRAG-gim).

A :class:`CaptionDatastore` holds caption texts, their vectors in the encoder's text space
(``encoder.embed_texts``), their hubness priors (``encoder.caption_prior``; zeros when the encoder
has none) and the id of the image each caption belongs to. Image -> caption scores are
``cosine - prior`` (inverted softmax against a fixed bank of training images, see
:meth:`mmrag.encoders.bridge.Bridge.caption_prior`). At a few tens of thousands of captions an
exact numpy matrix product is fast enough (a 1,000 x 30,000 score block is ~10 ms of BLAS), so the
search is an :class:`~mmrag.retrieval.exact.ExactIndex`, no ANN index.

Building from a corpus embeds every caption (Flickr8k train: 30,000 captions, minutes on a small
CPU), so the result is cached under ``mmrag.paths.cache_dir()/datastores`` as ``NAME.npz`` (arrays)
+ ``NAME.json`` (texts, ids, provenance), written atomically and keyed by the corpus path, split,
the manifest's size/mtime and the encoder's fingerprint (its spec and a hash of its bridge).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mmrag.errors import MmragError
from mmrag.retrieval.exact import ExactIndex

__all__ = ["CaptionDatastore", "CaptionHit", "DatastoreError", "default_datastore"]

FORMAT_VERSION = 1


class DatastoreError(MmragError):
    """The caption datastore is empty, inconsistent or unreadable."""


@dataclass
class CaptionHit:
    """One retrieved caption: its text, score (``cosine - prior``), owning image and row."""

    text: str
    score: float
    image_id: str
    index: int
    synthetic: bool = False

    def as_dict(self) -> dict:
        return {"text": self.text, "score": round(float(self.score), 5), "image_id": self.image_id,
                "synthetic": self.synthetic}


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class CaptionDatastore:
    """Captions, their vectors and priors, and the image each came from."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, priors: np.ndarray | None,
                 image_ids: Sequence[str], synthetic: Sequence[bool] | None = None,
                 info: dict | None = None, image_paths: dict[str, str] | None = None):
        vectors = np.asarray(vectors, np.float32)
        n = len(texts)
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise DatastoreError(f"vectors must have shape [{n}, dim], got {tuple(vectors.shape)}")
        if len(image_ids) != n:
            raise DatastoreError(f"{len(image_ids)} image ids for {n} captions")
        self.texts = list(texts)
        self.vectors = vectors
        self.priors = np.zeros(n, np.float32) if priors is None else np.asarray(priors, np.float32)
        if self.priors.shape != (n,):
            raise DatastoreError(f"priors must have shape [{n}], got {self.priors.shape}")
        self.image_ids = [str(i) for i in image_ids]
        self.synthetic = np.zeros(n, bool) if synthetic is None else np.asarray(synthetic, bool)
        self.info = dict(info or {})
        # image id -> file path (resolved), so a query given as a path can exclude its own captions
        self.image_paths = dict(image_paths or {})
        self._rows_by_image: dict[str, np.ndarray] | None = None
        self._df = None
        # Optional task-specific linear map applied to image vectors before retrieval, fitted on
        # this datastore's (image, caption) pairs by refinement (see fit_query_map); saved with it.
        self.query_map = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_synthetic(self) -> int:
        return int(self.synthetic.sum())

    def rows_by_image(self) -> dict[str, np.ndarray]:
        if self._rows_by_image is None:
            d: dict[str, list[int]] = {}
            for r, i in enumerate(self.image_ids):
                d.setdefault(i, []).append(r)
            self._rows_by_image = {k: np.asarray(v, np.int64) for k, v in d.items()}
        return self._rows_by_image

    def captions_by_image(self, human_only: bool = True) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t, i, s in zip(self.texts, self.image_ids, self.synthetic):
            if human_only and s:
                continue
            out.setdefault(i, []).append(t)
        return out

    def image_id_for_path(self, path) -> str | None:
        """The datastore's id of an image file, when that file is one of its images."""
        try:
            p = str(Path(path).resolve())
        except (OSError, TypeError):
            return None
        if not hasattr(self, "_by_path"):
            self._by_path = {v: k for k, v in self.image_paths.items()}
        return self._by_path.get(p)

    def document_frequency(self):
        """CIDEr-D document frequencies over the datastore's human captions (one doc per image),
        for the ``consensus`` generator's ``cider`` similarity; computed once."""
        if self._df is None:
            from mmrag.generators.consensus import DocumentFrequency

            self._df = DocumentFrequency.from_captions(self.captions_by_image(human_only=True).values())
        return self._df

    # ------------------------------------------------------------------ building
    @classmethod
    def from_texts(cls, encoder, texts: Sequence[str], image_ids: Sequence[str], info: dict | None = None,
                   image_paths: dict[str, str] | None = None, progress: bool = False) -> "CaptionDatastore":
        texts = list(texts)
        if texts:
            vecs = encoder.embed_texts(texts, progress=progress)
            priors = encoder.caption_prior(vecs)
        else:
            vecs, priors = np.zeros((0, encoder.dim), np.float32), None
        info = dict(info or {})
        info.setdefault("encoder", encoder.fingerprint())
        return cls(texts, vecs, priors, image_ids, info=info, image_paths=image_paths)

    @classmethod
    def from_searcher(cls, searcher) -> "CaptionDatastore":
        """The captions of an index (a :class:`~mmrag.retrieval.Searcher`): texts, vectors and
        priors as the index stores them, each owned by its image."""
        ids = searcher.ids("captions")
        if not ids:
            raise DatastoreError(f"the index {searcher.collection.root.name} has no captions")
        metas = searcher.metadata(ids, "captions")
        vecs = searcher.vectors(ids, "captions")
        texts = [str((m or {}).get("text", "")) for m in metas]
        owners = [str((m or {}).get("image_id") or i.split("#", 1)[0]) for i, m in zip(ids, metas)]
        priors = np.asarray([float((m or {}).get("prior", 0.0)) for m in metas], np.float32)
        return cls(texts, vecs, priors, owners, info={"source": f"index {searcher.collection.root.name}"})

    @classmethod
    def from_corpus(cls, corpus, encoder, cache: bool | str | Path = True, progress: bool = False,
                    split: str | None = None) -> "CaptionDatastore":
        """All captions of a corpus. ``cache``: True (default cache folder), a folder, or False."""
        texts, owner = corpus.captions()
        ids = [corpus.items[o].id for o in owner]
        paths = {it.id: str(Path(it.path).resolve()) for it in corpus.items}
        info = {"corpus": corpus.name, "root": str(corpus.root), "split": split,
                "encoder": encoder.fingerprint(), "n_images": len(corpus.items)}
        cache_file = None
        if cache:
            folder = Path(cache) if not isinstance(cache, bool) else _default_cache_dir()
            cache_file = folder / f"{_cache_key(corpus, split, info['encoder'], texts)}.npz"
            if cache_file.exists() and cache_file.with_suffix(".json").exists():
                try:
                    ds = cls.load(cache_file)
                    if len(ds) == len(texts) and ds.info.get("encoder") == info["encoder"]:
                        ds.image_paths = paths
                        return ds
                except (DatastoreError, OSError, ValueError, KeyError):
                    pass  # a damaged cache is rebuilt
        if progress:  # minutes on a small CPU: say what is being built, and that it happens once
            where = f"; cached in {cache_file.parent}" if cache_file is not None else " (not cached)"
            print(f"building the caption datastore ({corpus.name}{' ' + split if split else ''}, "
                  f"{len(texts):,} captions) once{where}", file=sys.stderr, flush=True)
        ds = cls.from_texts(encoder, texts, ids, info=info, image_paths=paths, progress=progress)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            ds.save(cache_file)
        return ds

    def add(self, texts: Sequence[str], image_ids: Sequence[str], encoder=None, vectors: np.ndarray | None = None,
            synthetic: bool = True) -> int:
        """Append captions (e.g. synthetic ones from refinement); embeds them with ``encoder``
        unless ``vectors`` are given. Returns the number added."""
        texts = list(texts)
        if len(texts) != len(image_ids):
            raise DatastoreError(f"{len(texts)} texts but {len(image_ids)} image ids")
        if not texts:
            return 0
        if vectors is None:
            if encoder is None:
                raise DatastoreError("add() needs an encoder or the texts' vectors")
            vectors = encoder.embed_texts(texts)
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(texts), self.dim) and len(self):
            raise DatastoreError(f"vectors must have shape [{len(texts)}, {self.dim}], got {vectors.shape}")
        priors = encoder.caption_prior(vectors) if encoder is not None else None
        if priors is None:
            priors = np.zeros(len(texts), np.float32)
        self.texts.extend(texts)
        self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors
        self.priors = np.concatenate([self.priors, np.asarray(priors, np.float32)])
        self.image_ids.extend(str(i) for i in image_ids)
        self.synthetic = np.concatenate([self.synthetic, np.full(len(texts), bool(synthetic))])
        self._rows_by_image = None
        return len(texts)

    def subset_images(self, keep_ids: Iterable[str]) -> "CaptionDatastore":
        """A datastore with only the captions of the given images (for quick experiments)."""
        keep = set(keep_ids)
        rows = [r for r, i in enumerate(self.image_ids) if i in keep]
        return CaptionDatastore([self.texts[r] for r in rows], self.vectors[rows], self.priors[rows],
                                [self.image_ids[r] for r in rows], self.synthetic[rows],
                                info={**self.info, "subset_of_images": len(keep)},
                                image_paths={k: v for k, v in self.image_paths.items() if k in keep})

    # ------------------------------------------------------------------ search
    def search(self, image_vectors: np.ndarray, k: int = 10,
               exclude_image_ids: Sequence[str | None] | None = None) -> list[list[CaptionHit]]:
        """Top-``k`` captions for each image vector by ``cosine - prior``, best first.

        ``exclude_image_ids[i]``: an image id whose captions query ``i`` must not retrieve (the
        query image itself when it is in the datastore), or None.
        """
        if len(self) == 0:
            raise DatastoreError("the caption datastore is empty: build it from a corpus with captions "
                                 "(e.g. Flickr8k train) or add captions first")
        if k < 1:
            raise DatastoreError(f"k must be >= 1, got {k}")
        q = np.asarray(image_vectors, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise DatastoreError(f"image vectors have dim {q.shape[1]}, the datastore {self.dim}")
        if self.query_map is not None:  # the least-squares prediction of the caption vector
            q = self.query_map.predict(q)
        if exclude_image_ids is not None and len(exclude_image_ids) != len(q):
            raise DatastoreError(f"{len(exclude_image_ids)} exclude ids for {len(q)} queries")
        rows = self.rows_by_image() if exclude_image_ids is not None else {}
        exclude = None if exclude_image_ids is None else [
            rows[ex] if ex is not None and ex in rows else None for ex in exclude_image_ids]
        S, top = ExactIndex(self.vectors, priors=self.priors).search(q, k, exclude=exclude)
        return [[CaptionHit(self.texts[r], float(s), self.image_ids[r], int(r), bool(self.synthetic[r]))
                 for s, r in zip(S[j], top[j]) if np.isfinite(s)] for j in range(len(q))]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npz: vectors, priors, synthetic flags) and its .json sidecar (texts,
        image ids, info), each atomically; the json is written last and names the npz's hash."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)

        qm = self.query_map
        maps = {} if qm is None else {"map_W": qm.W, "map_x_mean": qm.x_mean, "map_y_mean": qm.y_mean}

        def w(f):
            np.savez(f, vectors=self.vectors.astype(np.float32), priors=self.priors.astype(np.float32),
                     synthetic=self.synthetic.astype(np.uint8), **maps)
        _atomic_write_bytes(path, w)
        meta = {"format": FORMAT_VERSION, "n": len(self), "npz_size": path.stat().st_size, "info": self.info,
                "texts": self.texts, "image_ids": self.image_ids, "image_paths": self.image_paths}
        data = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        _atomic_write_bytes(path.with_suffix(".json"), lambda f: f.write(data))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CaptionDatastore":
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        side = path.with_suffix(".json")
        if not path.exists() or not side.exists():
            raise DatastoreError(f"no caption datastore at {path} (needs {path.name} and {side.name})")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatastoreError(f"{side}: unreadable datastore metadata ({e})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise DatastoreError(f"{side}: unsupported datastore format {meta.get('format')}")
        if meta.get("npz_size") not in (None, path.stat().st_size):
            raise DatastoreError(f"{path}: arrays and metadata do not match (interrupted write?)")
        with np.load(path) as z:
            vecs, priors, syn = z["vectors"], z["priors"], z["synthetic"].astype(bool)
            qmap = (z["map_W"], z["map_x_mean"], z["map_y_mean"]) if "map_W" in z.files else None
        ds = cls(meta["texts"], vecs, priors, meta["image_ids"], syn, info=meta.get("info"),
                 image_paths=meta.get("image_paths"))
        if qmap is not None:
            from mmrag.encoders.bridge import Bridge, BridgeConfig

            ds.query_map = Bridge(*qmap, BridgeConfig(**ds.info.get("query_map", {}).get("config", {})))
        return ds

    def copy(self) -> "CaptionDatastore":
        """An independent copy (arrays, lists, info and query map), e.g. to refine without touching
        the original."""
        ds = CaptionDatastore(list(self.texts), self.vectors.copy(), self.priors.copy(), list(self.image_ids),
                              self.synthetic.copy(), info=dict(self.info), image_paths=dict(self.image_paths))
        ds.query_map = self.query_map
        return ds

    def fit_query_map(self, image_vectors: dict[str, np.ndarray], lam: float = 1.0) -> int:
        """Fit ``query_map``: ridge least squares (the mRAG-gim linear map, closed form, mean-centred)
        from image vectors to caption vectors over this datastore's pairs whose image is in
        ``image_vectors`` (id -> vector), synthetic captions included. Returns the pairs used."""
        from mmrag.encoders.bridge import Bridge, BridgeConfig

        rows = [i for i, iid in enumerate(self.image_ids) if iid in image_vectors]
        if len(rows) < 2:
            raise DatastoreError("fitting the query map needs image vectors for at least 2 of the datastore's captions")
        X = np.stack([np.asarray(image_vectors[self.image_ids[i]], np.float32) for i in rows])
        config = BridgeConfig(lam=float(lam), text_whitening=0.0)
        self.query_map = Bridge.fit(X, self.vectors[rows], config)
        self.info["query_map"] = {"config": {"method": config.method, "lam": config.lam, "text_whitening": 0.0},
                                  "pairs": len(rows), "synthetic_pairs": int(self.synthetic[rows].sum())}
        return len(rows)


def _default_cache_dir() -> Path:
    from mmrag.paths import cache_dir

    return cache_dir() / "datastores"


def _cache_key(corpus, split, enc_fp: str, texts: Sequence[str]) -> str:
    h = hashlib.sha1()
    root = Path(corpus.root)
    h.update(f"{corpus.name}|{root.resolve()}|{split}|{enc_fp}|{len(texts)}".encode())
    for manifest in ("captions.jsonl", "Flickr8k.token.txt"):
        m = root / manifest
        if m.exists():
            st = m.stat()
            h.update(f"{manifest}:{st.st_size}:{int(st.st_mtime)}".encode())
    h.update("\n".join(texts[:50]).encode())
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{corpus.name}_{split or 'all'}")
    return f"{name}_{h.hexdigest()[:16]}"


def default_datastore(encoder, data_dir: str | Path | None = None, dataset: str = "flickr8k",
                      split: str | None = "train", progress: bool = False) -> CaptionDatastore:
    """The default datastore: Flickr8k train captions (from ``data_dir``, else ../shared/data)."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.paths import repo_data_dir

    if data_dir is None:
        base = repo_data_dir()
        if base is None or not (base / "flickr8k").exists():
            raise DatastoreError("no caption datastore given and Flickr8k was not found "
                                 "(pass --datastore FILE or --data-dir DIR)")
        data_dir = base / "flickr8k"
    corpus = read_corpus(dataset, data_dir, split=split)
    return CaptionDatastore.from_corpus(corpus, encoder, split=split, progress=progress)
