"""Retrieval-augmented captioning (mRAG-gim): image -> bridge -> top-k captions -> generator.

:class:`MRagCaptioner` embeds an image with the encoder (for ``effnet-minilm`` the image features
go through the linear bridge into the caption text space), retrieves the ``k`` best captions of a
:class:`CaptionDatastore` by ``cosine - prior`` (the query image's own captions excluded when the
image is in the datastore), and writes the caption with a generator:

* ``consensus`` (default, no language model): the retrieved captions are the candidates
  (``evidence``, with ``evidence_vectors`` and ``evidence_scores``); the one agreeing most with the
  others is returned. With ``similarity="cider"`` the idf comes from the datastore's captions.
* language-model generators (``local``, ``openai``): ``prompt_captions`` of the retrieved captions
  go into a prompt, chosen by retrieval similarity (``select="similarity"``) or by their consensus
  score among all ``k`` retrieved (``select="consensus"``), the best first (``order="first"``) or
  last (``order="last"``). ``prompt_style="smallcap"`` is the SmallCap / mRAG-gim completion prompt
  ``"Similar images show:\\n<caption>\\n...\\nThis image shows:"``; ``"instruct"`` asks an
  instruction model for one short caption in the style of the examples. The image itself is
  attached for endpoints that take images.

Results carry the evidence (texts, scores, owning image ids). Unreadable images give a result with
``error`` set; the others are still captioned.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.generators.base import GenerationRequest, Generator, GeneratorError, create_generator
from mmrag.generators.consensus import ConsensusGenerator
from mmrag.retrieval.datastore import CaptionDatastore, CaptionHit, DatastoreError

__all__ = ["CaptionResult", "MRagCaptioner", "build_prompt", "evaluate_captioner", "DEFAULT_K", "MAX_K",
           "DEFAULT_SIMILARITY"]

# Chosen on Flickr8k dev (benchmarks/bench_caption.py, docs/benchmarks.md).
DEFAULT_K = 100
# The most captions one image may retrieve: the consensus generator scores the k captions
# against each other on a dense k x vocabulary matrix, about 1.3 GB at 1,000 and 6 GB at 3,000
MAX_K = 1000
DEFAULT_SIMILARITY = "cider"
# For language-model generators (benchmarks/bench_caption_local.py, chosen on dev).
DEFAULT_PROMPT_CAPTIONS = 5
DEFAULT_SELECT = "consensus"
DEFAULT_PROMPT_STYLE = "instruct"

PROMPT_HEAD = "Similar images show:"
PROMPT_TAIL = "This image shows:"
INSTRUCT_SYSTEM = "You write short, literal image captions."
INSTRUCT_HEAD = "Captions of images that look like this one:"
INSTRUCT_TAIL = ("Write one caption for this image in the same style: one short sentence, under 15 "
                 "words, only what is visible.")
PROMPT_STYLES = ("smallcap", "instruct")
SELECTIONS = ("similarity", "consensus")


def build_prompt(captions: Sequence[str], order: str = "first", style: str = "smallcap") -> str:
    """The user message for a language-model generator; ``captions`` best first; ``order="last"``
    puts the best one next to the question. ``style``: ``smallcap`` (the SmallCap / mRAG-gim
    completion prompt) or ``instruct`` (an instruction with the captions as examples)."""
    if order not in ("first", "last"):
        raise ValueError(f"order must be 'first' or 'last', got {order!r}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    caps = [c.strip() for c in (list(captions) if order == "first" else list(captions)[::-1])]
    if style == "smallcap":
        return "\n".join([PROMPT_HEAD, *caps, PROMPT_TAIL])
    return "\n".join([INSTRUCT_HEAD, *(f"- {c}" for c in caps), INSTRUCT_TAIL])


@dataclass
class CaptionResult:
    """The caption of one image and its evidence; ``error`` is set (and ``caption`` None) when the
    image could not be captioned."""

    image: str
    caption: str | None
    evidence: list[CaptionHit] = field(default_factory=list)
    image_id: str | None = None
    error: str | None = None
    generator: str | None = None
    raw: Any = None
    # For language-model generators: positions in ``evidence`` of the captions in the prompt.
    prompt_evidence: list[int] | None = None

    def as_dict(self) -> dict:
        d = {"image": self.image, "caption": self.caption, "image_id": self.image_id,
             "generator": self.generator, "evidence": [h.as_dict() for h in self.evidence]}
        if self.prompt_evidence is not None:
            d["prompt_evidence"] = self.prompt_evidence
        if self.error:
            d["error"] = self.error
        return d


def _label(image) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"<{type(image).__name__}>"


class MRagCaptioner:
    """mRAG-gim captioner: ``caption(image)`` / ``caption_batch(images)``.

    ``generator``: a registry name (``consensus``, ``local``, ``openai``) or a Generator;
    ``generator_options``: keyword arguments for the registry; ``k``: captions retrieved;
    ``exclude_own``: leave out the query image's own captions when the image is in the datastore
    (matched by id, or by file path). For language-model generators: ``prompt_captions`` (how many
    of the ``k`` retrieved go into the prompt), ``select`` (``similarity`` or ``consensus``: which
    ones), ``order``, ``prompt_style`` (``smallcap`` or ``instruct``) and ``max_tokens``.
    """

    def __init__(self, encoder, datastore: CaptionDatastore, generator: str | Generator = "consensus",
                 k: int = DEFAULT_K, generator_options: dict | None = None, order: str = "first",
                 exclude_own: bool = True, max_tokens: int = 40, prompt_captions: int = DEFAULT_PROMPT_CAPTIONS,
                 select: str = DEFAULT_SELECT, prompt_style: str = DEFAULT_PROMPT_STYLE):
        if datastore is None or len(datastore) == 0:
            raise DatastoreError("the caption datastore is empty: captioning retrieves captions, so build "
                                 "the datastore from a captioned corpus (e.g. Flickr8k train) first")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be within [1, {MAX_K}], got {k}")
        if order not in ("first", "last"):
            raise ValueError(f"order must be 'first' or 'last', got {order!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if prompt_captions < 1:
            raise ValueError(f"prompt_captions must be >= 1, got {prompt_captions}")
        self.prompt_captions = int(prompt_captions)
        self.select = select
        self.prompt_style = prompt_style
        self.encoder = encoder
        self.datastore = datastore
        self.k = int(k)
        self.order = order
        self.exclude_own = exclude_own
        self.max_tokens = max_tokens
        opts = dict(generator_options or {})
        if isinstance(generator, str):
            name = generator
            if name == "consensus":
                opts.setdefault("similarity", DEFAULT_SIMILARITY)
                if opts["similarity"] == "cider" and opts.get("document_frequency", "datastore") == "datastore":
                    opts["document_frequency"] = datastore.document_frequency()
                elif opts.get("document_frequency") == "candidates":
                    opts["document_frequency"] = None
            generator = create_generator(name, **opts)
        self.generator = generator
        self.uses_evidence = generator.reads_evidence
        # Picks the prompt's captions for a language model by their agreement with the others.
        self._selector = None
        if not self.uses_evidence and select == "consensus":
            self._selector = ConsensusGenerator("cider", document_frequency=datastore.document_frequency())

    # ------------------------------------------------------------------ requests
    def prompt_picks(self, hits: Sequence[CaptionHit]) -> list[int]:
        """Positions in ``hits`` of the captions a language-model prompt gets, best first:
        the first ``prompt_captions`` by retrieval, or by consensus score (``select``)."""
        order = list(range(len(hits)))
        if self._selector is not None and len(hits) > self.prompt_captions:
            req = GenerationRequest(evidence=[h.text for h in hits], evidence_scores=[h.score for h in hits])
            order = [int(i) for i in np.argsort(-self._selector.scores(req), kind="stable")]
        return order[: self.prompt_captions]

    def build_request(self, hits: Sequence[CaptionHit], image=None,
                      picks: Sequence[int] | None = None) -> GenerationRequest:
        """``picks``: :meth:`prompt_picks` of ``hits`` when already computed."""
        texts = [h.text for h in hits]
        req = GenerationRequest(
            evidence=texts,
            evidence_scores=[h.score for h in hits],
            evidence_vectors=self.datastore.vectors[[h.index for h in hits]] if hits else None,
            max_tokens=self.max_tokens,
            temperature=0.0,
        )
        if not self.uses_evidence:
            picks = self.prompt_picks(hits) if picks is None else picks
            prompt = build_prompt([texts[i] for i in picks], self.order, self.prompt_style)
            req.messages = ([{"role": "system", "content": INSTRUCT_SYSTEM}] if self.prompt_style == "instruct"
                            else []) + [{"role": "user", "content": prompt}]
            req.stop = ["\n"]
            if isinstance(image, (str, Path, bytes)):
                req.images = [image]
        return req

    @staticmethod
    def _clean(text: str) -> str:
        """The first line, without quotes or the list bullet the instruct prompt's examples invite."""
        text = (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""
        text = text.strip().strip('"').strip()
        return re.sub(r"^(?:[-*•]|\d+[.)])\s+", "", text).strip().strip('"').strip()

    def _exclude_id(self, image, image_id):
        if not self.exclude_own:
            return None
        if image_id is not None:
            return image_id
        if isinstance(image, (str, Path)):
            return self.datastore.image_id_for_path(image)
        return None

    # ------------------------------------------------------------------ captioning
    def caption_vectors(self, vectors: np.ndarray, image_ids: Sequence[str | None] | None = None,
                        images: Sequence[Any] | None = None,
                        errors: dict[int, str] | None = None) -> list[CaptionResult]:
        """Caption images already embedded (rows of ``vectors``); ``images`` only label results
        and go to language-model generators; ``errors``: rows that could not be embedded."""
        n = len(vectors)
        images = list(images) if images is not None else [None] * n
        ids = list(image_ids) if image_ids is not None else [None] * n
        excl = [self._exclude_id(im, i) for im, i in zip(images, ids)]
        errors = errors or {}
        ok = [i for i in range(n) if i not in errors]
        hits_ok = self.datastore.search(np.asarray(vectors)[ok], self.k, [excl[i] for i in ok]) if ok else []
        hits = dict(zip(ok, hits_ok))
        gname = self.generator.name
        out = []
        for i in range(n):
            label = _label(images[i]) if images[i] is not None else str(ids[i])
            rid = ids[i] if ids[i] is not None else excl[i]
            if i in errors:
                out.append(CaptionResult(label, None, [], rid, error=str(errors[i]), generator=gname))
                continue
            h = hits[i]
            if not h:
                out.append(CaptionResult(label, None, [], rid, error="no caption retrieved", generator=gname))
                continue
            try:
                picks = None if self.uses_evidence else self.prompt_picks(h)
                res = self.generator.generate(self.build_request(h, images[i], picks))
                text = res.text if self.uses_evidence else self._clean(res.text)
                if not text:
                    raise GeneratorError("the generator returned an empty caption")
                out.append(CaptionResult(label, text, h, rid, generator=gname, raw=res.raw, prompt_evidence=picks))
            except GeneratorError as e:
                out.append(CaptionResult(label, None, h, rid, error=f"generator failed: {e}", generator=gname))
        return out

    def caption_batch(self, images: Sequence[Any], image_ids: Sequence[str | None] | None = None,
                      batch_size: int = 32, progress: bool = False) -> list[CaptionResult]:
        """Caption many images (paths, bytes or PIL images); unreadable ones give error entries."""
        images = list(images)
        if not images:
            return []
        vecs, errors = self.encoder.embed_images_safe(images, batch_size=batch_size, progress=progress)
        return self.caption_vectors(vecs, image_ids, images, errors)

    def caption(self, image, image_id: str | None = None) -> CaptionResult:
        return self.caption_batch([image], [image_id])[0]


def evaluate_captioner(captioner: MRagCaptioner, corpus, vectors: np.ndarray | None = None,
                       metrics: Sequence[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr"),
                       java: str | None = "auto", progress: bool = False, method: str | None = None) -> dict:
    """Caption every image of ``corpus`` and score against its captions (×100).

    ``vectors``: the corpus images already embedded (skips the image encoder; the timing then
    covers retrieval + generation only). Returns the metric dict plus ``method``, ``n_images``,
    ``n_errors``, ``seconds_per_image`` and ``predictions``.
    """
    from mmrag.eval.caption_metrics import caption_scores

    items = [it for it in corpus.items if it.captions]
    if not items:
        raise DatastoreError(f"corpus {corpus.name!r} has no captioned images to evaluate on")
    t0 = time.perf_counter()
    if vectors is None:
        vecs, errors = captioner.encoder.embed_images_safe([it.path for it in items], progress=progress)
    else:
        vecs, errors = np.asarray(vectors), {}
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = captioner.caption_vectors(vecs, [it.id for it in items], [str(it.path) for it in items], errors)
    t_gen = time.perf_counter() - t1
    preds = {r.image_id: r.caption for r in results if r.caption is not None}
    refs = {it.id: it.captions for it in items}
    scores = caption_scores(preds, refs, metrics=metrics, java=java)
    gname = captioner.generator.name
    scores.update({
        "method": method or f"{gname} k={captioner.k}",
        "n_images": len(preds),
        "n_errors": len(results) - len(preds),
        "errors": {r.image: r.error for r in results if r.error},
        "seconds_per_image": (t_embed + t_gen) / len(items),
        "seconds_per_image_embed": t_embed / len(items),
        "seconds_per_image_retrieve_generate": t_gen / len(items),
        "predictions": preds,
    })
    return scores
