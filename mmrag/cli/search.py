"""``mmrag search`` (text/image queries on an index) and ``mmrag eval retrieval`` (Recall@K)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmrag.cli.common import (
    BridgeOpt, CorpusArg, DataDirAlias, DatasetAlias, EncoderModelOpt, EncoderOpt, KindOpt, SplitOpt,
    corpus_source, encoder_from_options, fail, out, write_json_report,
)
from mmrag.errors import InvalidInputError


MAX_CELL = 200  # characters of a caption shown in the table (--json gives the whole field)


def _short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis: a long field must not flood the terminal."""
    text = " ".join(text[: width * 2].split())  # also folds newlines, which would break the row
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _print_hits(hits, target: str) -> None:
    t = Table(show_header=True, header_style="bold")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("id")
    texts = [h.metadata.get("text") if target == "captions" else (h.metadata.get("captions") or [""])[0]
             for h in hits]
    for n, h in enumerate(hits):  # the words written in an uncaptioned image (--ocr)
        if not texts[n] and h.metadata.get("ocr_text"):
            texts[n] = "text in image: " + " ".join(str(h.metadata["ocr_text"]).split())
    # the path says where the file is; the id alone (often a file name) does not
    paths = [str(h.metadata.get("path") or "") for h in hits]
    if any(p and p != h.id for p, h in zip(paths, hits)):
        t.add_column("path", overflow="fold")
    else:
        paths = None
    if any(texts):  # no empty caption column for an uncaptioned index
        t.add_column("caption" if target == "images" else "text")
    for i, h in enumerate(hits, 1):
        score = f"{h.score:.3f}" if abs(h.score) >= 0.001 else f"{h.score:.2g}"
        row = [str(i), score, _short(h.id, 120)]
        if paths is not None:
            row.append(paths[i - 1])
        if any(texts):
            row.append(_short(texts[i - 1] or "", MAX_CELL))
        t.add_row(*row)
    out.print(t)
    if target == "captions" and any(h.score < 0 for h in hits):
        out.print("score: cosine similarity of the query and caption vectors; across image and text it is "
                  "often below 0 even for a good match -- compare scores by rank, not by sign.", markup=False)


def search(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index directory."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Text query."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image query (file)."),
    weight: float = typer.Option(0.5, help="With both text and image: the text's weight in [0, 1]."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    target: str = typer.Option("images", help="images (text/image -> image) or captions (image -> caption)."),
    where: list[str] = typer.Option([], "--where", help="Metadata filter key=value (repeatable)."),
    mode: str = typer.Option("auto", help="vector, keyword (BM25 over captions, text in images, file names), hybrid (both, score-fused) or auto (hybrid for text on an index with text)."),
    safe: bool = typer.Option(False, "--safe", help="Drop images the safety model flagged (index built with --safety)."),
    clarify: bool = typer.Option(False, "--clarify/--no-clarify", help="Text queries: when the top results are close together, ask the question that best separates them (\"is there a dog or a ball?\") and say which results each answer keeps. Reads the index's captions, else the Flickr8k caption datastore; without either, no question. With --json the output becomes {\"results\": [...], \"clarify\": ...}."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
):
    """Search an index by text, by image, or both."""
    from mmrag.retrieval import Searcher
    from mmrag.retrieval.searcher import TARGETS, check_query

    check_query(text, image, weight, k)  # before the model loads
    if image is not None and not image.is_file():
        fail(f"{image}: no such image file")
    flt = {}
    for w in where:
        if "=" not in w:
            fail(f"--where takes key=value, got {w!r}")
        key, val = w.split("=", 1)
        flt[key] = val  # metadata values compare as strings
    from mmrag.index.filters import check_filter

    try:
        check_filter(flt)  # e.g. an empty key ("=x"): the store's own check, before the model loads
    except ValueError as e:
        fail(f"--where: {e}")
    from mmrag.retrieval.searcher import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    s = Searcher(index_dir)
    if not s.has_store(target):
        fail(f"--target must be one of {', '.join(TARGETS)} (or an extra store the index has), got {target!r}")
    if target == "captions" and s.count("captions") == 0:
        fail("this index has no captions to search (--target captions); caption it first (`mmrag caption`)")
    ask = clarify and text is not None and image is None and target == "images"
    if ask:
        from mmrag.tasks.chat.clarify import ClarifyConfig

        config = ClarifyConfig()
    try:
        mode = s.resolve_mode(mode, text, image, target)  # "auto" decided once, for search and relevance
        # the closeness rule reads the first config.top hits (it was chosen on that many)
        pool = s.search(text=text, image=image, k=max(k, config.top) if ask else k, weight=weight, target=target,
                        filter=flt or None, mode=mode, safe=safe)
    except InvalidInputError as e:  # (also caught by main(); here for callers of the Typer app itself)
        fail(str(e))
    hits = pool[:k]
    # text->image hits get a calibrated relevance (probability of a match; mmrag.retrieval.relevance)
    s.add_relevance(hits, text, image, target, mode)
    question = None
    if ask:
        from mmrag.tasks.chat.clarify import clarifying_question
        from mmrag.tasks.chat.session import caption_features

        question = clarifying_question(s, text, pool, caption_features(s, "auto"), config, shown=len(hits))
    if as_json:
        rows = [{"id": h.id, "score": h.score, **({"relevance": h.metadata["relevance"]}
                                                  if "relevance" in h.metadata else {}),
                 "metadata": h.metadata} for h in hits]
        doc = {"results": rows, "clarify": question.to_dict() if question else None} if clarify else rows
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        if s.no_good_match(hits):
            from mmrag.retrieval.relevance import NO_MATCH_THRESHOLD

            best = max((h.metadata["relevance"] for h in hits), default=0.0)
            out.print(f"no good match: the best hit's relevance is {best:.2f} (< {NO_MATCH_THRESHOLD}); "
                      "the closest images follow")
        _print_hits(hits, target)
        if question is not None:
            _print_clarification(question, hits, index_dir, text)


def _print_clarification(question, hits, index_dir: Path, text: str) -> None:
    """The question under the results, and for each answer the results it keeps (by rank)."""
    rank = {h.id: i for i, h in enumerate(hits, 1)}
    out.print(f"\nThe top results are close. {question.question[0].upper()}{question.question[1:]}", markup=False)
    width = max(len(o.answer) for o in question.options)
    for o in question.options:
        kept = " ".join(f"#{rank[i]}" for i in sorted(o.kept_ids, key=rank.get))
        out.print(f"  {o.answer:<{width}}  keeps {kept}" if kept else f"  {o.answer:<{width}}  keeps none of these",
                  markup=False)
    out.print(f"(answer and refine: mmrag chat --index {index_dir} -d {json.dumps(text)})", markup=False)


def eval_retrieval(
    corpus: CorpusArg = None,
    kind: KindOpt = "auto",
    split: SplitOpt = "default",
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N images only."),
    hubness: bool = typer.Option(True, help="Apply the captions' hubness prior to image->caption (when the encoder has one)."),
    image_prior: bool = typer.Option(True, help="Apply the images' hubness prior to text->image, as search does "
                                     "(when the encoder has one)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Recall@1/5/10 both ways (every caption queries the images; every image the captions)."""
    from mmrag.corpus.readers import read_corpus, resolve_split
    from mmrag.eval.retrieval import evaluate_retrieval

    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    split = resolve_split(kind, path, split)
    c = read_corpus(kind, path, split=split, limit=limit)
    res = evaluate_retrieval(c, encoder_from_options(encoder, encoder_model, bridge), hubness=hubness,
                             image_prior=image_prior)
    res["split"] = split
    t = Table(title=f"{res['dataset']} {split or 'all'}: {res['n_images']} images, {res['n_captions']} captions ({res['encoder']})")
    t.add_column("direction")
    for key in ("R@1", "R@5", "R@10"):
        t.add_column(key, justify="right")
    for d in ("t2i", "i2t"):
        t.add_row(d, *(f"{res[d][key]:.1f}" for key in ("R@1", "R@5", "R@10")))
    out.print(t)
    write_json_report(json_out, res)
