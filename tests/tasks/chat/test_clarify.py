"""Ask when unsure (mmrag.tasks.chat.clarify) on a real 40-image Flickr8k index with its captions:
a question under close top hits, none under a clear winner, and each option's re-ordering of the
shown hits consistent with the caption-word evidence; the same through ``mmrag search --clarify``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.tasks.chat.answerers import SimulatedUser
from mmrag.tasks.chat.clarify import KEEP_PROBABILITY, ClarifyConfig, clarifying_question, closeness
from mmrag.tasks.chat.session import caption_features

VAGUE = "a photo of something outside"  # says little: many images fit about equally


@pytest.fixture(scope="module")
def searcher(flickr8k_test_index, effnet_minilm):
    from mmrag.retrieval import Searcher

    s = Searcher(flickr8k_test_index[0], encoder=effnet_minilm)
    yield s
    s.close()


@pytest.fixture(scope="module")
def features(searcher):
    return caption_features(searcher, "auto")  # the index's own captions


def _hits(searcher, text, k=20):
    return searcher.search(text=text, k=k, mode="vector")


def _closeness(searcher, text, config=ClarifyConfig()):
    hits = _hits(searcher, text, config.top)
    q = searcher.encoder.embed_texts([text])[0]
    cos = searcher.vectors([h.id for h in hits]) @ q
    return closeness(cos, config.signal, config.top, config.temperature, searcher.relevance_model())


@pytest.fixture(scope="module")
def clear_query(searcher, flickr8k_test_index):
    """The image description whose top hit is the most clearly ahead (default rule's signal)."""
    items = flickr8k_test_index[1]
    return min((it.captions[0] for it in items[:20]), key=lambda t: _closeness(searcher, t))


def test_asks_when_close_not_when_clear(searcher, features, clear_query):
    config = ClarifyConfig()
    assert _closeness(searcher, VAGUE) >= config.threshold > _closeness(searcher, clear_query)
    c = clarifying_question(searcher, VAGUE, _hits(searcher, VAGUE), features)
    assert c is not None and c.question.endswith("?") and c.closeness >= config.threshold
    assert clarifying_question(searcher, clear_query, _hits(searcher, clear_query), features) is None
    # forced, the clear query gets a question too: the rule, not the questioner, said no
    assert clarifying_question(searcher, clear_query, _hits(searcher, clear_query), features, force=True)
    # no caption source, no hits, or one hit: no question, never an error
    assert clarifying_question(searcher, VAGUE, _hits(searcher, VAGUE), None) is None
    assert clarifying_question(searcher, VAGUE, [], features) is None
    assert clarifying_question(searcher, VAGUE, _hits(searcher, VAGUE, 1), features) is None


def test_each_option_keeps_the_hits_its_answer_fits(searcher, features, flickr8k_test_index):
    hits = _hits(searcher, VAGUE)
    c = clarifying_question(searcher, VAGUE, hits, features, force=True, shown=10)
    shown = [h.id for h in hits[:10]]
    choice = c.asked.info.get("options")
    assert [o.answer for o in c.options] == ([*choice, "neither"] if choice else ["yes", "no"])
    rows = {i: features.row(i) for i in shown}
    for o in c.options:
        assert sorted(o.hit_ids) == sorted(shown)  # a re-ordering of the shown hits, nothing else
        assert [i for i in o.hit_ids if i in set(o.kept_ids)] == o.kept_ids  # kept in the new order
        for i in shown:  # kept exactly when the answer is at least even odds under the hit's words
            if choice:
                p = [rows[i].get(w, 0.0) for w in choice]
                lik = (np.prod([1 - x for x in p]) if o.answer == "neither" else
                       np.prod([1 - x for x in p[: choice.index(o.answer)]]) * p[choice.index(o.answer)])
            else:
                p = rows[i].get(c.topic, 0.0)
                lik = p if o.answer == "yes" else 1 - p
            assert (i in o.kept_ids) == (lik >= KEEP_PROBABILITY), (o.answer, i, lik)
    # the simulated user of `mmrag eval chat` answers with one of the options
    items = {it.id: it for it in flickr8k_test_index[1]}
    answer = SimulatedUser(items[shown[0]].captions[1:]).answer(c.question)
    assert answer in [o.answer for o in c.options]


def test_config_is_checked():
    for bad in ({"signal": "vibes"}, {"rerank": "shuffle"}, {"top": 1}, {"temperature": 0}):
        with pytest.raises(ValueError):
            ClarifyConfig(**bad)


def _cli(*args):
    return CliRunner().invoke(app, ["search", *map(str, args)], env={"COLUMNS": "200"})


def test_cli_prints_the_question_under_the_results(flickr8k_test_index, clear_query):
    idx = flickr8k_test_index[0]
    r = _cli("--index", idx, "--text", VAGUE, "--mode", "vector", "--clarify")
    assert r.exit_code == 0, r.output
    head, _, tail = r.output.partition("The top results are close.")
    assert tail and "?" in tail.splitlines()[0] and "score" in head  # the table, then the question
    assert tail.count("keeps") >= 2 and "mmrag chat --index" in tail
    # off by default, and for a clear query
    assert "The top results are close" not in _cli("--index", idx, "--text", VAGUE, "--mode", "vector").output
    assert "The top results are close" not in _cli("--index", idx, "--text", clear_query, "--clarify").output
    d = json.loads(_cli("--index", idx, "--text", VAGUE, "--mode", "vector", "-k", 5, "--clarify", "--json").output)
    assert len(d["results"]) == 5 and d["clarify"]["question"].endswith("?")
    ids = sorted(h["id"] for h in d["results"])
    assert all(sorted(o["hit_ids"]) == ids for o in d["clarify"]["options"])
    d = json.loads(_cli("--index", idx, "--text", clear_query, "--clarify", "--json").output)
    assert d["clarify"] is None and d["results"]
