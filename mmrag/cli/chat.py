"""``mmrag chat`` (interactive chat over an index) and ``mmrag eval chat`` (Hits@K per round)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmrag.cli.common import (
    BridgeOpt, CorpusArg, DataDirAlias, DatasetAlias, EncoderModelOpt, EncoderOpt, GenOpt, KindOpt, SplitOpt,
    corpus_source, err, fail, out, parse_gen_opts, resolve_encoder, write_json_report,
)
from mmrag.errors import MmragError

_CHOICES_HELP = ("split: may ask either-or questions ('is there a dog or a cat?') when they separate the "
                 "candidates better than a yes/no question.")
_QUERY_HELP = "Query mode: chatir, mean, chatir-yes or words (default: chosen on dev)."
_RESCORE_HELP = ("Weight of the answers in re-scoring (0: off; default 0.1, chosen on dev for split; bank's "
                 "dev choice is 0.15).")
_MODE_HELP = "Re-scoring: loglik (log-likelihood of the answers under each image, default) or linear."


def _questioner(name: str, bank: Optional[Path], generator: str, gen_opts: list[str], choices: bool = True):
    from mmrag.tasks.chat.questioners import QUESTIONERS, create_questioner

    if name not in QUESTIONERS.names():
        fail(f"unknown questioner {name!r}; available: {', '.join(QUESTIONERS.names())}")
    if name == "bank":
        return create_questioner("bank", bank=str(bank) if bank else None)
    if name == "llm":
        return create_questioner("llm", generator=generator, generator_options=parse_gen_opts(gen_opts))
    if name == "split":
        return create_questioner("split", max_options=2 if choices else 1)
    return create_questioner(name)


def _ranking(query: Optional[str], rescore_weight: Optional[float], pool: Optional[int],
             rescore_mode: Optional[str] = None):
    from mmrag.tasks.chat.ranking import RankingConfig

    kw = {k: v for k, v in (("query", query), ("rescore_weight", rescore_weight), ("pool", pool),
                            ("rescore_mode", rescore_mode)) if v is not None}
    try:
        return RankingConfig(**kw)
    except ValueError as e:
        fail(str(e))


def _show_turn(turn) -> None:
    t = Table(title=f"round {turn.round}: {turn.query}", show_header=True, header_style="bold", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("id")
    t.add_column("caption")
    for h in turn.hits:
        caps = h.metadata.get("captions") or [""]
        t.add_row(str(h.rank), f"{h.score:.3f}", h.id, str(caps[0]))
    out.print(t)


def chat(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index directory built by `mmrag index` (its encoder is used)."),
    description: Optional[str] = typer.Option(None, "--description", "-d", help="The first description (asked for if not given)."),
    questioner: str = typer.Option("split", help="Questioner: split, bank or llm."),
    k: int = typer.Option(10, "-k", help="Results shown per round."),
    rounds: int = typer.Option(10, help="Stop after this many answers."),
    answers: list[str] = typer.Option([], "--answer", "-a", help="Scripted answers, in order (repeatable); without them the chat is interactive."),
    captions: str = typer.Option("auto", help="Where candidates' captions come from: auto, index, datastore (Flickr8k train)."),
    bank: Optional[Path] = typer.Option(None, help="bank: question file (one per line, JSON list or ChatIR dialogs)."),
    choices: bool = typer.Option(True, "--choices/--no-choices", help=_CHOICES_HELP),
    generator: str = typer.Option("local", help="llm: generator registry name (local, openai)."),
    gen_opt: GenOpt = [],
    query: Optional[str] = typer.Option(None, help=_QUERY_HELP),
    rescore_weight: Optional[float] = typer.Option(None, help=_RESCORE_HELP),
    rescore_mode: Optional[str] = typer.Option(None, help=_MODE_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the transcript (every turn) here."),
):
    """Find an image by chatting: describe it, see the top results, answer questions.

    Answer yes/no questions with yes or no, either-or questions ("is there a dog or a cat?") with the option you see or "neither", other questions in a few words.

    Interactive unless --answer is given; an empty answer (or 'q') ends the chat."""
    from mmrag.retrieval import Searcher
    from mmrag.tasks.chat.session import ChatSession

    if k < 1 or rounds < 0:
        fail("-k must be >= 1 and --rounds >= 0")
    session = ChatSession(Searcher(index_dir), _questioner(questioner, bank, generator, gen_opt, choices), k=k,
                          ranking=_ranking(query, rescore_weight, None, rescore_mode), captions=captions)
    interactive = not answers
    if description is None:
        if not interactive:
            fail("--answer needs --description")
        description = typer.prompt("Describe the image you are looking for")
    turn = session.start(description)
    _show_turn(turn)
    scripted = list(answers)
    while turn.question is not None and turn.round < rounds:
        if interactive:
            reply = typer.prompt(f"[{turn.round + 1}] {turn.question.text}", default="", show_default=False)
        else:
            if not scripted:
                break
            reply = scripted.pop(0)
            out.print(f"[bold][{turn.round + 1}] {turn.question.text}[/] {reply}")
        if not reply.strip() or reply.strip().lower() in ("q", "quit", "exit"):
            break
        turn = session.answer(reply)
        _show_turn(turn)
    if turn.question is None:
        out.print("(no further question to ask)")
    _show_summary(session.summary())
    write_json_report(json_out, {**session.to_dict(), "summary": session.summary()})


def _show_summary(s: dict) -> None:
    """The last word of every chat, however it ended (an empty answer used to end it silently)."""
    out.print(f"chat ended after {s['rounds']} answer{'s' if s['rounds'] != 1 else ''}; query: {s['query']}")
    if not s["best"]:
        out.print("no results")
    for h in s["best"]:
        cap = f"  {h['caption']}" if h["caption"] else ""
        out.print(f"best {h['rank']}: {h['id']} ({h['score']:.3f}){cap}", markup=False, highlight=False)


def eval_chat(
    corpus: CorpusArg = None,
    kind: KindOpt = "flickr8k",
    split: SplitOpt = "default",
    search_space: str = typer.Option("split", help="split: search among the split's images; all: among every image of the corpus."),
    questioner: str = typer.Option("split", help="Questioner: split, bank or llm."),
    rounds: int = typer.Option(10, help="Question rounds (0..R are reported)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N targets (quick runs)."),
    description_index: int = typer.Option(0, help="Which reference caption is the description (the others answer)."),
    dialogs: Optional[Path] = typer.Option(None, help="Replay ChatIR dialog files ([{img, dialog}]) instead of asking."),
    image_map: Optional[Path] = typer.Option(None, help="Replay: JSON object dialog img -> corpus id."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Replay against an index's images (and its encoder) instead of a corpus."),
    bank: Optional[Path] = typer.Option(None, help="bank: question file (default: ChatIR's VisDial questions)."),
    choices: bool = typer.Option(True, "--choices/--no-choices", help=_CHOICES_HELP),
    generator: str = typer.Option("local", help="llm: generator registry name."),
    gen_opt: GenOpt = [],
    query: Optional[str] = typer.Option(None, help=_QUERY_HELP),
    rescore_weight: Optional[float] = typer.Option(None, help=_RESCORE_HELP),
    rescore_mode: Optional[str] = typer.Option(None, help=_MODE_HELP),
    pool: Optional[int] = typer.Option(None, help="Candidates re-scored per round."),
    image_prior: bool = typer.Option(True, help="Rank by the images' hubness prior, as search does (the encoder's "
                                     "prior of the embedded images; with --index, the index's stored priors)."),
    datastore: Optional[Path] = typer.Option(None, help="Saved caption datastore for candidates' caption words "
                                             "(default: Flickr8k train captions, built once and cached)."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Cumulative Hits@1/5/10 and mean rank at rounds 0..R with a simulated user (ChatIR protocol),
    or replayed dialogs with --dialogs. PATH defaults to ../shared/data/flickr8k; its image vectors are cached."""
    from mmrag.corpus.readers import read_corpus, resolve_split
    from mmrag.paths import repo_data_dir
    from mmrag.tasks.chat.evaluate import evaluate_chat, evaluate_replay, load_chatir_dialogs, targets_from_items
    from mmrag.retrieval import corpus_image_vectors, default_datastore
    from mmrag.tasks.chat.features import CaptionWordFeatures

    if search_space not in ("split", "all"):
        fail("--search-space must be split or all")
    ranking = _ranking(query, rescore_weight, pool, rescore_mode)
    enc = resolve_encoder(index_dir, encoder, encoder_model, bridge)
    if index_dir is not None:
        if dialogs is None:
            fail("--index is for replaying --dialogs; simulated-user runs need a corpus PATH")
        from mmrag.retrieval import Searcher

        s = Searcher(index_dir, encoder=enc)
        ids = s.ids()
        vecs = s.vectors(ids)
        prior = s.image_priors(ids) if image_prior else None
    else:
        base = repo_data_dir()
        default = base / "flickr8k" if base is not None and (base / "flickr8k").exists() else None
        path, kind = corpus_source(corpus, data_dir, kind, dataset, default_path=default)
        split = resolve_split(kind, path, split)
        # one cached embedding of the whole corpus serves every split and search space
        full = read_corpus(kind, path)
        vecs = corpus_image_vectors(enc, full)
        keep = [i for i, it in enumerate(full.items) if search_space == "all" or split is None or it.split == split]
        if not keep:
            fail(f"no image of {path} is in split {split!r}")
        ids = [full.items[i].id for i in keep]
        vecs = vecs[keep]
        prior = enc.image_prior(vecs) if image_prior else None
    gate = enc.image_prior_gate() if prior is not None else None
    try:
        if datastore is not None:
            from mmrag.retrieval import CaptionDatastore

            feats = CaptionWordFeatures(CaptionDatastore.load(datastore))
        else:
            feats = CaptionWordFeatures(default_datastore(enc, progress=True))
    except MmragError as e:
        if datastore is not None:
            raise
        err.print(f"[yellow]no caption datastore ({e}); split/bank questioners and re-scoring are off[/]")
        feats = None
    if dialogs is not None:
        dl = load_chatir_dialogs(dialogs)[:limit] if limit else load_chatir_dialogs(dialogs)
        imap = None
        if image_map is not None:
            try:
                imap = json.loads(image_map.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                fail(f"--image-map {image_map}: {e}")
        res = evaluate_replay(enc, vecs, ids, dl, rounds=rounds, ranking=ranking, features=feats, image_map=imap,
                              image_prior=prior, image_prior_gate=gate)
        res["dialogs"] = str(dialogs)
    else:
        tc = read_corpus(kind, path, split=split, limit=limit)
        targets = targets_from_items(tc.items, {x: i for i, x in enumerate(ids)}, description_index)
        q = _questioner(questioner, bank, generator, gen_opt, choices)
        res = evaluate_chat(enc, vecs, ids, targets, q, rounds=rounds, ranking=ranking, features=feats,
                            image_prior=prior, image_prior_gate=gate)
        res.update({"dataset": kind, "split": split, "search_space": search_space})
    t = Table(title=f"{res['questioner']}: {res['n_queries']} targets among {res['corpus_size']} images")
    t.add_column("round", justify="right")
    for c in ("Hits@1", "Hits@5", "Hits@10", "mean rank"):
        t.add_column(c, justify="right")
    for r in range(len(res["hits@10"])):
        t.add_row(str(r), f"{res['hits@1'][r]:.1f}", f"{res['hits@5'][r]:.1f}", f"{res['hits@10'][r]:.1f}",
                  f"{res['mean_rank'][r]:.1f}")
    out.print(t)
    write_json_report(json_out, res)
