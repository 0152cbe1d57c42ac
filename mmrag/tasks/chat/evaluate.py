"""Evaluation as in ChatIR: every target image is searched for over rounds 0..R of a dialog.

Protocol (:func:`evaluate_chat`): each target's first reference caption is the description
(``description_index``); its other captions are all the :class:`~.answerers.SimulatedUser` ever
sees. At round ``r`` the dialog (description + ``r`` question-answer rounds) ranks the whole
search space; the questioner then sees the top candidates (ids, scores and their nearest
captions' words, never the target's identity or captions) and asks; the simulated user answers.

Metrics per round ``r`` = 0..R, over all targets: cumulative Hits@K exactly as ChatIR (the
target was in the top K at some round <= r), Hits@1 likewise, and the mean / median rank of the
target at round ``r`` itself (1 = first). Queries of a round are embedded in one batch and scored
against all image vectors with one matrix product; re-scoring and questions use the same code as
:class:`~.session.ChatSession`. With ``image_prior`` (each image's text->image hubness prior,
:meth:`~mmrag.encoders.base.Encoder.image_prior`), the scores are search's gated ``cos - prior``
(:func:`~mmrag.encoders.image_prior.rerank_rows`, the gate read on the raw cosine top-1) before
the pool is taken and the answers re-score it.

:func:`evaluate_replay` replays recorded ChatIR dialogs (``[{"img", "dialog": [caption,
"question? answer", ...]}]``): rounds are read from the file instead of asked and answered. In
the ``chatir`` query mode the text at round ``r`` is ChatIR's ``", ".join(dialog[:r + 1])`` of the
recorded strings, byte for byte (:meth:`~.dialog.Dialog.prefix` keeps them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmrag.encoders.image_prior import rerank_rows
from mmrag.errors import MmragError
from mmrag.retrieval.exact import CHUNK, ExactIndex, top_k
from mmrag.tasks.chat.answerers import SimulatedUser
from mmrag.tasks.chat.dialog import Dialog, DialogError, Round
from mmrag.tasks.chat.features import CaptionWordFeatures
from mmrag.tasks.chat.questioners import Candidates, Questioner
from mmrag.tasks.chat.ranking import RankingConfig, query_vectors, rescore, round_constraints
from mmrag.tasks.chat.questioners import QUESTIONER_TOP

HITS_AT = (1, 5, 10)


class ChatEvalError(MmragError):
    """Evaluation inputs are inconsistent (no targets, unknown images, bad dialog file)."""


@dataclass
class ChatTarget:
    """A target: its row in the search space, the description, and the simulated user's captions."""

    row: int
    description: str
    captions: list[str]


def targets_from_items(items, row_of: dict[str, int], description_index: int = 0) -> list[ChatTarget]:
    """Targets from corpus items with >= 2 captions: caption ``description_index`` describes, the
    others answer."""
    out = []
    for it in items:
        if len(it.captions) < 2 or it.id not in row_of:
            continue
        d = description_index % len(it.captions)
        out.append(ChatTarget(row_of[it.id], it.captions[d], [c for j, c in enumerate(it.captions) if j != d]))
    if not out:
        raise ChatEvalError("no target with at least two captions (one describes, the others answer)")
    return out


class _Ranker:
    """Scores dialogs against all image vectors: cosine (minus the gated image prior, when
    given) top-``pool``, re-scored, full ranks."""

    def __init__(self, encoder, vectors: np.ndarray, ids: Sequence[str], ranking: RankingConfig,
                 features: CaptionWordFeatures | None, progress: bool = False,
                 image_prior: np.ndarray | None = None, image_prior_gate: float | None = None):
        self.encoder, self.V, self.ids, self.ranking = encoder, np.asarray(vectors, np.float32), list(ids), ranking
        self.index = ExactIndex(self.V)
        if image_prior is not None and len(image_prior) != len(self.ids):
            raise ChatEvalError(f"{len(image_prior)} image priors for {len(self.ids)} images")
        self.prior = None if image_prior is None else np.asarray(image_prior, np.float32)
        self.gate = image_prior_gate
        self.features = features
        self.M = features.matrix(self.ids, self.V) if features is not None else None
        self.cache: dict[str, np.ndarray] = {}

    def rank(self, dialogs: Sequence[Dialog], target_rows: Sequence[int], chunk: int = CHUNK):
        """For each dialog: (target rank, top candidate rows best first, their scores)."""
        Q = query_vectors(self.encoder, dialogs, self.ranking, self.cache)
        P = min(self.ranking.pool, len(self.ids))
        out = []
        for s in range(0, len(Q), chunk):
            S = self.index.scores(Q[s : s + chunk])
            if self.prior is not None:  # as search ranks text->image: before the pool and the answers
                S = rerank_rows(S, self.prior, self.gate)
            for j in range(len(S)):
                d, t, row = dialogs[s + j], target_rows[s + j], S[j]
                pool = top_k(row, P)  # best first, ties in row order
                sc = row[pool]
                cons = round_constraints(d)
                if self.M is not None and cons and self.ranking.rescore_weight > 0:
                    sc = rescore(sc, self.M[pool], self.features.vocab, cons, self.ranking)
                order = np.argsort(-sc, kind="stable")
                pos = np.flatnonzero(pool[order] == t)
                rank = int(pos[0]) + 1 if len(pos) else int((row > row[t]).sum()) + 1
                out.append((max(rank, P + 1) if not len(pos) else rank, pool[order], sc[order]))
        return out

    def candidates(self, rows: np.ndarray, scores: np.ndarray, top: int = QUESTIONER_TOP) -> Candidates:
        rows, scores = rows[:top], scores[:top]
        c = Candidates([self.ids[r] for r in rows], np.asarray(scores, np.float32))
        if self.M is not None:
            c.words, c.vocab, c.words_list = self.M[rows], self.features.vocab, self.features.words
            c.texts = [[" ".join(self.features.top_words(self.ids[r], 8))] for r in rows[:5]]
        return c


def _summary(ranks: np.ndarray, n_images: int) -> dict[str, Any]:
    """ranks: [rounds+1, n_targets] ranks at each round."""
    best = np.minimum.accumulate(ranks, axis=0)
    res: dict[str, Any] = {}
    for k in HITS_AT:
        res[f"hits@{k}"] = [round(100.0 * float((b <= k).mean()), 2) for b in best]
    res["hits@10_per_round"] = [round(100.0 * float((r <= 10).mean()), 2) for r in ranks]
    res["mean_rank"] = [round(float(r.mean()), 1) for r in ranks]
    res["median_rank"] = [float(np.median(r)) for r in ranks]
    return res


def evaluate_chat(encoder, vectors: np.ndarray, ids: Sequence[str], targets: Sequence[ChatTarget],
                  questioner: Questioner, rounds: int = 10, ranking: RankingConfig | None = None,
                  features: CaptionWordFeatures | None = None, progress: bool = True,
                  keep_dialogs: int = 5, log: Callable[[str], None] | None = None,
                  image_prior: np.ndarray | None = None, image_prior_gate: float | None = None) -> dict[str, Any]:
    """Simulated-user evaluation (see module docstring); returns the metrics as a dict.
    ``image_prior``: per image (rows of ``vectors``), subtracted where ``image_prior_gate``
    admits the query (None: every query); None: plain cosine."""
    if not targets:
        raise ChatEvalError("no targets to evaluate")
    if rounds < 0:
        raise ChatEvalError("rounds must be >= 0")
    ranking = ranking or RankingConfig()
    t0 = time.perf_counter()
    ranker = _Ranker(encoder, vectors, ids, ranking, features, image_prior=image_prior,
                     image_prior_gate=image_prior_gate)
    users = [SimulatedUser(t.captions) for t in targets]
    dialogs = [Dialog(t.description) for t in targets]
    rows = [t.row for t in targets]
    ranks = np.zeros((rounds + 1, len(targets)), np.int64)
    no_question = 0
    it = range(rounds + 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"chat rounds ({questioner.name})", unit="round", leave=False)
    for r in it:
        res = ranker.rank(dialogs, rows)
        ranks[r] = [x[0] for x in res]
        if log:
            log(f"round {r}: hits@10 {100 * float((ranks[: r + 1].min(0) <= 10).mean()):.1f}")
        if r == rounds:
            break
        for i, (d, u, (_, cand_rows, cand_scores)) in enumerate(zip(dialogs, users, res)):
            q = questioner.ask(d, ranker.candidates(cand_rows, cand_scores, top=questioner.top))
            if q is None:
                no_question += 1
                continue
            d.rounds.append(Round(q.text, u.answer(q.text), q.topic))
    out = {"questioner": questioner.name, "n_queries": len(targets),
           "corpus_size": len(ids), "rounds": rounds, "ranking": ranking.to_dict(),
           "image_prior": image_prior is not None,
           **_summary(ranks, len(ids)), "unasked_rounds": no_question,
           "seconds": round(time.perf_counter() - t0, 1)}
    out["examples"] = [{"target": ids[t.row], **d.to_dict()} for t, d in zip(targets[:keep_dialogs], dialogs)]
    return out


# ---------------------------------------------------------------------------- replay
def load_chatir_dialogs(path: str | Path) -> list[tuple[str, Dialog]]:
    """Read a ChatIR dialog file: ``[{"img": ..., "dialog": [caption, "q? a", ...]}, ...]``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChatEvalError(f"dialog file {p} does not exist") from None
    except UnicodeDecodeError as e:
        raise ChatEvalError(f"dialog file {p} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ChatEvalError(f"dialog file {p}: invalid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise ChatEvalError(f"dialog file {p}: expected a non-empty list of {{'img', 'dialog'}} objects")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "img" not in row or "dialog" not in row:
            raise ChatEvalError(f"dialog file {p}: entry {i} needs 'img' and 'dialog'")
        try:
            out.append((str(row["img"]), Dialog.from_chatir(row["dialog"])))
        except DialogError as e:
            raise ChatEvalError(f"dialog file {p}: entry {i}: {e}") from None
    return out


def match_images(names: Sequence[str], ids: Sequence[str], image_map: dict[str, str] | None = None) -> list[int | None]:
    """Row of each dialog image in the search space: through ``image_map`` (dialog name ->
    corpus id) when given, else by exact id, else by file name."""
    by_id = {x: i for i, x in enumerate(ids)}
    by_base: dict[str, int] = {}
    for i, x in enumerate(ids):
        by_base.setdefault(Path(x).name, i)
    out = []
    for n in names:
        n = (image_map or {}).get(n, n)
        out.append(by_id[n] if n in by_id else by_base.get(Path(n).name))
    return out


def dialogs_at_round(dialogs: Sequence[Dialog], r: int) -> list[Dialog]:
    """What a replay ranks at round ``r``: each dialog's description and first ``r`` rounds, the
    recorded strings kept, so the ``chatir`` query text is ``", ".join(dialog[:r + 1])``."""
    return [d.prefix(r) for d in dialogs]


def evaluate_replay(encoder, vectors: np.ndarray, ids: Sequence[str], dialogs: Sequence[tuple[str, Dialog]],
                    rounds: int | None = None, ranking: RankingConfig | None = None,
                    features: CaptionWordFeatures | None = None, image_map: dict[str, str] | None = None,
                    progress: bool = True, image_prior: np.ndarray | None = None,
                    image_prior_gate: float | None = None) -> dict[str, Any]:
    """Replay recorded dialogs against a search space; dialogs whose image it lacks are skipped
    (counted in ``unmatched``). ``image_prior``, ``image_prior_gate``: as :func:`evaluate_chat`."""
    ranking = ranking or RankingConfig()
    rows = match_images([n for n, _ in dialogs], ids, image_map)
    kept = [(r, d) for r, (_, d) in zip(rows, dialogs) if r is not None]
    if not kept:
        raise ChatEvalError(f"none of the {len(dialogs)} dialogs' images is in the search space "
                            f"({len(ids)} images); map them with an image map (dialog img -> corpus id)")
    R = min(len(d.rounds) for _, d in kept) if rounds is None else rounds
    t0 = time.perf_counter()
    ranker = _Ranker(encoder, vectors, ids, ranking, features, image_prior=image_prior,
                     image_prior_gate=image_prior_gate)
    ranks = np.zeros((R + 1, len(kept)), np.int64)
    it = range(R + 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="replay rounds", unit="round", leave=False)
    for r in it:
        ds = dialogs_at_round([d for _, d in kept], r)
        ranks[r] = [x[0] for x in ranker.rank(ds, [row for row, _ in kept])]
    return {"questioner": "replay", "n_queries": len(kept), "unmatched": len(dialogs) - len(kept),
            "corpus_size": len(ids), "rounds": R, "ranking": ranking.to_dict(),
            "image_prior": image_prior is not None, **_summary(ranks, len(ids)),
            "seconds": round(time.perf_counter() - t0, 1)}
