"""The CLIP byte-pair-encoding tokenizer, written to give exactly the ids of OpenAI's.

Behaviour follows ``clip/simple_tokenizer.py`` of https://github.com/openai/CLIP (MIT licence,
Copyright (c) 2021 OpenAI), which open_clip also ships: ``ftfy.fix_text``, HTML unescaping
(twice), whitespace collapsing, lower-casing, the CLIP pre-tokenisation regex, byte-level BPE with
an end-of-word ``</w>`` marker, ``<|startoftext|>`` / ``<|endoftext|>`` around each text, context
length 77, over-long texts cut with the end-of-text token kept in the last position, and zero
padding. The code here is our own.

The vocabulary comes either from OpenAI's merge list ``bpe_simple_vocab_16e6.txt.gz`` (a copy is
bundled in ``mmrag/assets``, see the README there for its licence) or from a Hugging Face tokenizer
directory (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``), so that an exported model
directory is tokenised with its own vocabulary.
"""

from __future__ import annotations

import gzip
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np


def _deps():
    """(ftfy, regex), imported on first use: declared dependencies, but ftfy alone costs ~0.1-0.4 s
    of every command's start-up, and only CLIP tokenisation needs them."""
    try:
        import ftfy
        import regex
    except ImportError as e:  # pragma: no cover - broken install
        raise ModelUnavailableError(f"the CLIP tokenizer needs ftfy and regex ({e}); pip install ftfy regex") from None
    return ftfy, regex

from mmrag.errors import ModelUnavailableError

DEFAULT_BPE_PATH = Path(__file__).resolve().parent.parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# OpenAI's pre-tokenisation pattern (compiled case-insensitively, applied to lower-cased text).
_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_CACHE_LIMIT = 200_000  # words; bounds memory on huge corpora (OpenAI's cache grows without bound)


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character table of GPT-2/CLIP byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def basic_clean(text: str) -> str:
    text = _deps()[0].fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))


def openai_vocab_from_bpe_gz(bpe_path: str | Path = DEFAULT_BPE_PATH) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build (token -> id, merges) exactly as OpenAI's ``SimpleTokenizer`` does from the gz file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend([SOT_TOKEN, EOT_TOKEN])
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


def _parse_merge(m) -> tuple[str, str]:
    if isinstance(m, str):
        a, b = m.split(" ")
        return a, b
    a, b = m
    return a, b


class ClipTokenizer:
    """Text -> int64 ids [n, context_length], identical to OpenAI CLIP's ``clip.tokenize``."""

    def __init__(
        self,
        encoder: dict[str, int],
        merges: Sequence[tuple[str, str]],
        context_length: int = CONTEXT_LENGTH,
        sot_token: str = SOT_TOKEN,
        eot_token: str = EOT_TOKEN,
    ):
        regex = _deps()[1]
        self.encoder = dict(encoder)
        self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        if sot_token not in self.encoder or eot_token not in self.encoder:
            raise ModelUnavailableError(
                f"CLIP vocabulary lacks the special tokens {sot_token!r} / {eot_token!r}"
            )
        self.sot_token_id = self.encoder[sot_token]
        self.eot_token_id = self.encoder[eot_token]
        self.context_length = int(context_length)
        self._specials = {sot_token: sot_token, eot_token: eot_token}
        self._cache: dict[str, str] = dict(self._specials)
        self.pat = regex.compile(_PATTERN, regex.IGNORECASE)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_bpe_gz(cls, bpe_path: str | Path = DEFAULT_BPE_PATH, context_length: int = CONTEXT_LENGTH):
        encoder, merges = openai_vocab_from_bpe_gz(bpe_path)
        return cls(encoder, merges, context_length)

    @classmethod
    def from_hf_dir(cls, directory: str | Path, context_length: int = CONTEXT_LENGTH):
        """Load ``vocab.json`` + ``merges.txt``, else ``tokenizer.json``, from a Hugging Face dir."""
        d = Path(directory)
        vocab_p, merges_p, tok_p = d / "vocab.json", d / "merges.txt", d / "tokenizer.json"
        if vocab_p.is_file() and merges_p.is_file():
            encoder = json.loads(vocab_p.read_text(encoding="utf-8"))
            lines = merges_p.read_text(encoding="utf-8").split("\n")
            merges = [
                _parse_merge(line.rstrip("\r"))
                for line in lines
                if line.rstrip("\r") and not line.startswith("#version")
            ]
        elif tok_p.is_file():
            spec = json.loads(tok_p.read_text(encoding="utf-8"))
            model = spec.get("model") or {}
            if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
                raise ModelUnavailableError(f"{tok_p}: not a BPE tokenizer, cannot tokenise for CLIP")
            encoder = dict(model["vocab"])
            for added in spec.get("added_tokens", []):
                encoder.setdefault(added["content"], added["id"])
            merges = [_parse_merge(m) for m in model["merges"]]
        else:
            raise ModelUnavailableError(
                f"{d}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json)"
            )
        sot, eot = SOT_TOKEN, EOT_TOKEN
        cfg_p = d / "tokenizer_config.json"
        if cfg_p.is_file() and (sot not in encoder or eot not in encoder):
            cfg = json.loads(cfg_p.read_text(encoding="utf-8"))
            sot = _token_str(cfg.get("bos_token")) or sot
            eot = _token_str(cfg.get("eos_token")) or eot
        return cls(encoder, merges, context_length, sot_token=sot, eot_token=eot)

    @classmethod
    def from_dir_or_default(cls, directory: str | Path | None, context_length: int = CONTEXT_LENGTH):
        """The directory's own vocabulary when it has one, else OpenAI's bundled one."""
        if directory is not None:
            d = Path(directory)
            for cand in (d, d / "tokenizer"):
                has_vocab = (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file()
                if has_vocab or (cand / "tokenizer.json").is_file():
                    return cls.from_hf_dir(cand, context_length)
                gz = cand / "bpe_simple_vocab_16e6.txt.gz"
                if gz.is_file():
                    return cls.from_bpe_gz(gz, context_length)
        return cls.from_bpe_gz(DEFAULT_BPE_PATH, context_length)

    # -- tokenisation ---------------------------------------------------------------------------
    def bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        inf = float("inf")
        while True:
            bigram = min(pairs, key=lambda p: ranks.get(p, inf))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = dict(self._specials)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens."""
        text = whitespace_clean(basic_clean(text)).lower()
        ids: list[int] = []
        for tok in self.pat.findall(text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int64 array [n, context_length]: SOT, ids, EOT, zeros; over-long texts end with EOT."""
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = int(context_length or self.context_length)
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > n_ctx:
                ids = ids[:n_ctx]
                ids[-1] = self.eot_token_id
            out[i, : len(ids)] = ids
        return out


def _token_str(tok) -> str | None:
    if isinstance(tok, str):
        return tok
    if isinstance(tok, dict):
        return tok.get("content")
    return None
