"""Chat-based image retrieval: simulated user, questioners, session over a real index, evaluation,
ChatIR dialog replay, CLI. Real model and real Flickr8k images; a 40-image index keeps it fast."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from mmrag.tasks.chat import (
    Candidates,
    ChatSession,
    Dialog,
    DialogError,
    SimulatedUser,
    create_questioner,
)
from mmrag.tasks.chat.answerers import AnswererError
from mmrag.tasks.chat.dialog import Round
from mmrag.tasks.chat.evaluate import (
    ChatEvalError,
    evaluate_chat,
    evaluate_replay,
    load_chatir_dialogs,
    targets_from_items,
)
from mmrag.tasks.chat.features import CaptionWordFeatures
from mmrag.tasks.chat.ranking import RankingConfig

N_INDEX = 40


@pytest.fixture(scope="module")
def test_corpus(flickr8k_dir):
    from mmrag.corpus.readers import read_corpus

    return read_corpus("flickr8k", flickr8k_dir, split="test", limit=N_INDEX)


@pytest.fixture(scope="module")
def index(flickr8k_test_index):
    return flickr8k_test_index[0]  # the same N_INDEX images, indexed once for the session (conftest)


@pytest.fixture(scope="module")
def searcher(index, effnet_minilm):
    from mmrag.retrieval import Searcher

    s = Searcher(index, encoder=effnet_minilm)
    yield s
    s.close()


@pytest.fixture(scope="module")
def small_datastore(flickr8k_dir, effnet_minilm, tmp_path_factory):
    """Captions of 80 *train* images: candidates' caption words never come from the targets."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import CaptionDatastore

    train = read_corpus("flickr8k", flickr8k_dir, split="train", limit=80)
    return CaptionDatastore.from_corpus(train, effnet_minilm, cache=tmp_path_factory.mktemp("ds"), split="train")


def test_simulated_user_answers_from_its_captions_only(test_corpus):
    it = next(i for i in test_corpus.items if len(i.captions) == 5)
    desc, others = it.captions[0], it.captions[1:]
    user = SimulatedUser(others)
    from mmrag.tasks.chat.words import content_set, yes_no_question

    in_others = sorted(set().union(*(content_set(c) for c in others)))
    only_desc = sorted(content_set(desc) - set(in_others) - {"a"})
    w = next(x for x in in_others if len(x) > 3)
    assert user.answer(yes_no_question(w)) == "yes"
    assert user.answer("is there a giraffe?") == "no"
    for x in only_desc:  # the description is never evidence
        assert user.answer(f"is there a {x}?") == "no"
    u2 = SimulatedUser(["Two dogs play with a red ball on the grass", "A puppy runs across a lawn"])
    assert u2.answer("what color is the ball?") == "red"
    assert u2.answer("how many dogs are there?") == "two"
    assert u2.answer("is anyone running?") == "yes"
    assert u2.answer("is it a cat or a dog?") == "dog"
    assert u2.answer("is it a cat or a horse?") == "neither"  # like a "no": no caption mentions either
    assert u2.answer("is the photo in color?") == "i don't know"
    with pytest.raises(AnswererError, match="at least one reference caption"):
        SimulatedUser([])


def test_split_questioner_picks_the_word_that_halves_the_candidates():
    import scipy.sparse as sp

    words = ["dog", "ball", "grass", "beach"]
    # dog: in all four (no information), ball: in two of four (best), grass: in one, beach: none
    F = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    cand = Candidates(["a", "b", "c", "d"], np.array([0.5, 0.5, 0.5, 0.5], np.float32), sp.csr_matrix(F),
                      {w: i for i, w in enumerate(words)}, words)
    yes_no = create_questioner("split", max_options=1)
    q = yes_no.ask(Dialog("a photo"), cand)
    assert q.topic == "ball" and q.text == "is there a ball?" and q.info["gain_bits"] == pytest.approx(1.0, abs=1e-3)
    q2 = yes_no.ask(Dialog("a dog with a ball"), cand)  # described words are not asked
    assert q2.topic == "grass"


def test_split_questioner_asks_either_or_when_it_separates_more():
    import scipy.sparse as sp

    from mmrag.tasks.chat.ranking import round_constraints
    from mmrag.tasks.chat.words import choice_options

    words = ["dog", "ball", "grass", "beach"]
    F = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    cand = Candidates(["a", "b", "c", "d"], np.array([0.5, 0.5, 0.5, 0.5], np.float32), sp.csr_matrix(F),
                      {w: i for i, w in enumerate(words)}, words)
    # "grass or ball?" has three answers, grass (a) / ball (b) / neither (c, d): 1.5 bits,
    # more than the best yes/no question (ball: 1 bit)
    q = create_questioner("split").ask(Dialog("a photo"), cand)
    assert q.text == "is there grass or a ball?" and choice_options(q.text) == ["grass", "ball"]
    assert q.info["options"] == ["grass", "ball"] and q.info["gain_bits"] == pytest.approx(1.5, abs=1e-3)
    # every answer of the simulated user is read back as evidence about both options
    for caps, answer, cons in [(["a dog on the grass with a ball"], "grass", [("grass", 1)]),
                               (["a dog with a ball"], "ball", [("grass", -1), ("ball", 1)]),
                               (["a dog on a beach"], "neither", [("grass", -1), ("ball", -1)])]:
        a = SimulatedUser(caps).answer(q.text)
        assert a == answer
        d = Dialog("a photo")
        d.rounds.append(Round(q.text, a))
        assert round_constraints(d) == cons
    # a user's "i don't know" says nothing about either option
    d = Dialog("a photo")
    d.rounds.append(Round(q.text, "i don't know"))
    assert round_constraints(d) == []


def test_choice_questions_with_three_options():
    import scipy.sparse as sp

    from mmrag.tasks.chat.questioners import choice_gain
    from mmrag.tasks.chat.ranking import round_constraints
    from mmrag.tasks.chat.words import choice_constraints, choice_options, choice_question

    q = choice_question("dog", "ball", "swimming")
    assert q == "is there a dog, a ball or anyone swimming?"
    assert choice_options(q) == ["dog", "ball", "swimming"]
    assert choice_options("is it black, white or brown?") == ["black", "white", "brown"]
    assert choice_options("is the man wearing a hat or a cap in the picture?") == ["hat", "cap"]
    assert choice_options("is it sunny, or is it cloudy?") == ["sunny", "cloudy"]
    assert choice_options("is there a dog?") == [] and choice_options("is it or?") == []
    user = SimulatedUser(["a boy swims with a ball", "a child in a pool"])
    assert user.answer(q) == "ball"  # the first option its captions mention
    d = Dialog("a photo", [Round(q, user.answer(q))])
    assert round_constraints(d) == [("dog", -1), ("ball", 1)]  # swimming (after the named one): no evidence
    assert choice_constraints(q, "neither") == [("dog", -1), ("ball", -1), ("swimming", -1)]
    assert choice_constraints(q, "a ball and someone swimming") == [("dog", -1), ("ball", 1), ("swimming", 1)]
    assert choice_constraints("is there a dog or a ball?", "both") == [("dog", 1), ("ball", 1)]
    assert choice_constraints("is there a dog or a dog?", "dog") == []
    with pytest.raises(ValueError):
        choice_question("dog")

    # four candidates, each showing a different one of grass / ball / beach or none: "grass, ball
    # or beach?" tells all four apart (2 bits); the best pair leaves two together (1.5 bits)
    words = ["grass", "ball", "beach", "dog"]
    F = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]], np.float32)
    cand = Candidates(list("abcd"), np.full(4, 0.5, np.float32), sp.csr_matrix(F),
                      {w: i for i, w in enumerate(words)}, words)
    g = choice_gain(cand, np.arange(3), top=20, temperature=None, n_options=3)
    assert g.shape == (3, 3, 3) and g[0, 1, 2] == pytest.approx(2.0, abs=1e-6) and g[0, 0, 1] == -np.inf
    two = create_questioner("split").ask(Dialog("a photo"), cand)
    three = create_questioner("split", max_options=3).ask(Dialog("a photo"), cand)
    assert len(two.info["options"]) == 2 and two.info["gain_bits"] == pytest.approx(1.5, abs=1e-3)
    assert sorted(three.info["options"]) == ["ball", "beach", "grass"]
    assert three.info["gain_bits"] == pytest.approx(2.0, abs=1e-3)
    with pytest.raises(ValueError):
        create_questioner("split", max_options=0)


def test_caption_word_features_are_viewer_chances(searcher, small_datastore):
    ids = searcher.ids()[:10]
    V = searcher.vectors(ids)
    raw = CaptionWordFeatures(small_datastore, describers=1)
    four = CaptionWordFeatures(small_datastore)
    assert four.describers == 4
    R, P = raw.matrix(ids, V), four.matrix(ids, V)
    assert raw.words == four.words and (R != 0).nnz == (P != 0).nnz > 0
    # raw: fractions of the 20 nearest captions; default: chance one of 4 describers names the word
    assert np.allclose(R.data * raw.n_captions, np.round(R.data * raw.n_captions), atol=1e-4)
    assert np.allclose(P.toarray(), 1 - (1 - R.toarray()) ** 4, atol=1e-6)
    with pytest.raises(ValueError):
        CaptionWordFeatures(small_datastore, describers=0.5)


def test_rescoring_modes():
    import scipy.sparse as sp

    from mmrag.tasks.chat.ranking import rescore

    vocab = {"dog": 0, "ball": 1}
    W = sp.csr_matrix(np.array([[0.9, 0.0], [0.1, 0.5], [0.0, 1.0]], np.float32))
    cos = np.array([0.30, 0.31, 0.32], np.float32)
    ll = RankingConfig(rescore_weight=0.1)
    s = rescore(cos, W, vocab, [("dog", 1)], ll)
    assert s == pytest.approx(cos + 0.1 * np.log([0.9, 0.1, 0.02]), abs=1e-6)  # clipped at rescore_floor 0.02
    s = rescore(cos, W, vocab, [("dog", -1), ("cat", 1)], ll)  # unknown word: no evidence
    assert s == pytest.approx(cos + 0.1 * np.log([0.1, 0.9, 0.98]), abs=1e-6)
    lin = RankingConfig(rescore_weight=0.1, rescore_mode="linear")
    assert rescore(cos, W, vocab, [("ball", -1)], lin) == pytest.approx(cos - 0.1 * np.array([0, 0.5, 1.0]), abs=1e-6)
    assert rescore(cos, W, vocab, [("ball", -1)], RankingConfig(rescore_weight=0)) == pytest.approx(cos)
    for bad in (dict(rescore_mode="odds"), dict(rescore_floor=0.0), dict(rescore_weight=-1), dict(query="x"), dict(pool=0)):
        with pytest.raises(ValueError):
            RankingConfig(**bad)


def test_query_text_modes():
    from mmrag.tasks.chat.ranking import query_texts

    d = Dialog("two dogs in a field", [Round("is there grass?", "yes"), Round("is there a ball or anyone running?", "running"),
                                       Round("is there snow?", "no"), Round("what color is the dog?", "brown"),
                                       Round("is there a cat or a bird?", "neither")])
    assert query_texts(d, "chatir") == [d.query_text()]
    assert query_texts(d, "words") == ["two dogs in a field, grass, running, what color is the dog? brown"]
    assert query_texts(d, "chatir-yes") == ["two dogs in a field, is there grass? yes, is there a ball or anyone "
                                            "running? running, what color is the dog? brown"]
    assert len(query_texts(d, "mean")) == 6


def test_session_over_index(searcher, test_corpus):
    s = ChatSession(searcher, questioner="split", k=5, captions="index")
    t0 = s.start(test_corpus.items[0].captions[0])
    assert t0.round == 0 and len(t0.hits) == 5
    assert [h.rank for h in t0.hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(t0.hits, t0.hits[1:]))
    assert t0.question is not None and t0.question.text.endswith("?")
    assert t0.question.topic or len(t0.question.info.get("options", [])) == 2
    # the description's own image is found at round 0 on this small index
    assert test_corpus.items[0].id in [h.id for h in t0.hits]
    t1 = s.answer("yes")
    assert t1.round == 1 and t1.query.endswith(f"{t0.question.text} yes")
    assert t1.question is None or t1.question.text != t0.question.text
    d = json.loads(json.dumps(s.to_dict()))
    assert len(d["turns"]) == 2 and d["dialog"]["rounds"][0]["answer"] == "yes"
    with pytest.raises(DialogError):
        s.answer("   ")
    with pytest.raises(DialogError):
        ChatSession(searcher, k=3, captions="index").answer("yes")
    with pytest.raises(DialogError):
        s.start("")


def test_session_is_serialized_across_threads(searcher):
    s = ChatSession(searcher, questioner="split", k=3, captions="index")
    s.start("a dog in the snow")
    turns = []
    ths = [threading.Thread(target=lambda: turns.append(s.answer("no"))) for _ in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert sorted(t.round for t in turns) == [1, 2, 3] and len(s.dialog.rounds) == 3


@pytest.mark.parametrize("mode", ["loglik", "linear"])
def test_answers_move_the_ranking_through_rescoring(searcher, small_datastore, mode):
    feats = CaptionWordFeatures(small_datastore)
    plain = ChatSession(searcher, "split", k=40, captions=None, features=feats,
                        ranking=RankingConfig(rescore_weight=0.0))
    scored = ChatSession(searcher, "split", k=40, captions=None, features=feats,
                         ranking=RankingConfig(rescore_weight=0.2, rescore_mode=mode))
    for s in (plain, scored):
        s.start("a person outdoors")
        s.answer("yes", question="is there a dog?")
    ids_with_dog = {i for i in searcher.ids() if feats.row(i).get("dog", 0) > 0.5}
    assert ids_with_dog, "some test images' nearest train captions mention dogs"

    def mean_pos(turn):
        return np.mean([h.rank for h in turn.hits if h.id in ids_with_dog])

    assert mean_pos(scored.turns[-1]) < mean_pos(plain.turns[-1])


def test_bank_questioner_uses_visdial_questions(searcher, data_dir):
    from mmrag.tasks.chat.questioners import default_bank_path

    if default_bank_path() is None:
        pytest.skip("ChatIR dialog files are absent")
    s = ChatSession(searcher, questioner="bank", k=5, captions="index")
    t = s.start("a dog runs on the beach")
    assert t.question is not None
    visdial = {q.lower() for d in json.loads(default_bank_path().read_text()) for q in
               (x.rpartition("?")[0].strip() + "?" for x in d["dialog"][1:])}
    assert t.question.text.lower() in visdial
    t2 = s.answer("no")
    assert t2.question.text != t.question.text


def test_llm_questioner(searcher):
    from mmrag.errors import ModelUnavailableError

    try:
        q = create_questioner("llm", generator="local")
    except ModelUnavailableError as e:
        pytest.skip(f"local generator unavailable: {e}")
    s = ChatSession(searcher, questioner=q, k=3, captions="index")
    t = s.start("a child plays in the water")
    assert t.question is not None and len(t.question.text) > 3 and t.question.text.endswith("?")


def test_evaluate_chat_against_direct_ranking(searcher, test_corpus, small_datastore, effnet_minilm):
    ids = searcher.ids()
    V = searcher.vectors(ids)
    targets = targets_from_items(test_corpus.items, {x: i for i, x in enumerate(ids)})
    assert all(t.description not in t.captions for t in targets)  # the user never holds the description
    feats = CaptionWordFeatures(small_datastore)
    res = evaluate_chat(effnet_minilm, V, ids, targets, create_questioner("split"), rounds=3,
                        features=feats, ranking=RankingConfig(rescore_weight=0.05), progress=False)
    assert res["n_queries"] == len(targets) and res["corpus_size"] == len(ids)
    h = res["hits@10"]
    assert len(h) == 4 and all(a <= b for a, b in zip(h, h[1:]))
    # without an image prior, round 0 is text->image by cosine: recompute it independently
    Q = effnet_minilm.embed_texts([t.description for t in targets])
    S = Q @ V.T
    ranks0 = [int((S[i] > S[i, t.row]).sum()) + 1 for i, t in enumerate(targets)]
    assert res["mean_rank"][0] == pytest.approx(np.mean(ranks0), abs=0.051)
    assert h[0] == pytest.approx(100 * np.mean([r <= 10 for r in ranks0]), abs=0.01)
    ex = res["examples"][0]
    assert len(ex["rounds"]) == 3 and all(r["answer"] for r in ex["rounds"])


def test_replay_chatir_dialogs(searcher, test_corpus, effnet_minilm, tmp_path, data_dir):
    ids = searcher.ids()
    V = searcher.vectors(ids)
    items = test_corpus.items[:5]
    rows = [{"img": f"flickr/{it.id}", "dialog": [it.captions[0]] + [f"{c.rstrip(' .')}? yes" for c in it.captions[1:3]]}
            for it in items] + [{"img": "unlabeled2017/000000185565.jpg", "dialog": ["a bedroom", "is it dark? no", "x? y"]}]
    f = tmp_path / "dialogs.json"
    f.write_text(json.dumps(rows))
    dl = load_chatir_dialogs(f)
    res = evaluate_replay(effnet_minilm, V, ids, dl, progress=False)
    assert res["n_queries"] == 5 and res["unmatched"] == 1 and res["rounds"] == 2
    # recorded rounds add the target's own captions: it can only get easier
    assert res["hits@1"][-1] >= res["hits@1"][0] and res["mean_rank"][-1] <= res["mean_rank"][0]
    # the real ChatIR files parse; their VisDial images are not in a Flickr8k index
    real = data_dir / "chatir" / "dialogues" / "ChatGPT_BLIP2.json"
    if real.exists():
        d = load_chatir_dialogs(real)
        assert len(d) == 2064 and all(len(x.rounds) == 10 for _, x in d)
        with pytest.raises(ChatEvalError, match="none of the"):
            evaluate_replay(effnet_minilm, V, ids, d[:20], progress=False)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"img": 1}]')
    with pytest.raises(ChatEvalError, match="entry 0"):
        load_chatir_dialogs(bad)
    bad.write_bytes(b"\xff\xfe not json")
    with pytest.raises(ChatEvalError, match="UTF-8"):
        load_chatir_dialogs(bad)


def test_cli_chat_and_eval_replay(index, test_corpus, small_datastore, tmp_path):
    from typer.testing import CliRunner

    from mmrag.cli import app

    runner = CliRunner()
    out = tmp_path / "chat.json"
    r = runner.invoke(app, ["chat", "--index", str(index), "-d", "a dog runs on the grass", "-a", "yes", "-a", "no",
                            "-k", "3", "--captions", "index", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert len(d["turns"]) == 3 and [x["answer"] for x in d["dialog"]["rounds"]] == ["yes", "no"]
    ds = small_datastore.save(tmp_path / "ds.npz")
    dl = tmp_path / "d.json"
    dl.write_text(json.dumps([{"img": it.id, "dialog": it.captions[:3]} for it in test_corpus.items[:4]]))
    res = tmp_path / "replay.json"
    r = runner.invoke(app, ["eval", "chat", "--dialogs", str(dl), "--index", str(index), "--datastore", str(ds),
                            "--rounds", "2", "--json", str(res)])
    assert r.exit_code == 0, r.output
    j = json.loads(res.read_text())
    assert j["questioner"] == "replay" and j["n_queries"] == 4 and len(j["hits@10"]) == 3
    assert j["image_prior"]  # the index's stored priors, as search ranks it
    r = runner.invoke(app, ["eval", "chat", "--dialogs", str(dl), "--index", str(index), "--datastore", str(ds),
                            "--rounds", "2", "--no-image-prior", "--json", str(res)])
    assert r.exit_code == 0, r.output
    assert not json.loads(res.read_text())["image_prior"]
    r = runner.invoke(app, ["chat", "--index", str(index), "--questioner", "nope", "-d", "x", "-a", "y"])
    assert r.exit_code == 2 and "error: unknown questioner" in r.output  # one-line error, exit 2


def test_cli_chat_ends_with_a_summary_on_an_empty_answer(index, tmp_path):
    """#16 item 12: an empty answer ended the interactive chat with no summary."""
    from typer.testing import CliRunner

    from mmrag.cli import app

    out = tmp_path / "chat.json"
    r = CliRunner().invoke(app, ["chat", "--index", str(index), "-d", "a dog runs on the grass", "-k", "3",
                                 "--captions", "index", "--json", str(out)], input="yes\n\n")
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    s = d["summary"]
    assert s["rounds"] == 1 and len(s["best"]) == 3 and s["pending_question"]
    assert s["best"][0]["id"] == d["turns"][-1]["hits"][0]["id"]
    tail = r.output[r.output.rindex("chat ended"):]
    assert tail.startswith("chat ended after 1 answer;") and f"best 1: {s['best'][0]['id']}" in tail


def test_caption_verbs_are_asked_as_actions_not_things():
    """ "a dog sits" gives the word "sit": the question is "is there anyone who sits?", never
    "is there a sit?", and reading the question back gives the same word (answers unchanged)."""
    from mmrag.tasks.chat.words import choice_options, choice_question, question_topic, yes_no_question

    assert yes_no_question("sit") == "is there anyone who sits?"
    assert question_topic(yes_no_question("catch")) == "catch"
    q = choice_question("art", "sit")
    assert q == "is there an art or anyone who sits?" and choice_options(q) == ["art", "sit"]
    assert choice_options(choice_question("carry", "dog")) == ["carry", "dog"]
    assert yes_no_question("dog") == "is there a dog?"  # nouns as before


def _gated_query(searcher, test_corpus, k=10):
    """A description whose search ranking is the gated ``cos - prior`` and differs from cosine in the
    top ``k`` (the fixture index stores each image's prior)."""
    if searcher.encoder.image_prior_gate() is None or searcher.image_priors(searcher.ids()) is None:
        pytest.skip("the encoder or the index has no image prior")
    for it in test_corpus.items:
        text = it.captions[0]
        cos = searcher.search_vectors(searcher.query_vector(text), k=k)[0]
        hits = searcher.search(text, k=k)
        if [h.id for h in hits] != [h.id for h in cos]:
            return text, hits, cos
    pytest.fail("no description's ranking is moved by the image prior on the fixture index")


def test_session_round_0_ranks_as_search_does(searcher, test_corpus):
    text, hits, cos = _gated_query(searcher, test_corpus)
    t0 = ChatSession(searcher, "split", k=10, captions="index").start(text)
    assert [h.id for h in t0.hits] == [h.id for h in hits] != [h.id for h in cos]
    assert [h.score for h in t0.hits] == pytest.approx([h.score for h in hits], abs=1e-6)
    assert all(h.metadata["cosine"] - h.metadata["prior"] == pytest.approx(h.score, abs=1e-6) for h in t0.hits)


def test_clarifying_question_starts_from_the_prior_ranked_hits(searcher, test_corpus):
    from mmrag.tasks.chat.clarify import ClarifyConfig, clarifying_question

    text, _, cos = _gated_query(searcher, test_corpus)
    hits = searcher.search(text, k=20)
    feats = CaptionWordFeatures(searcher)
    # weight 0: every answer leaves the shown order, which is search's (cos - prior), not cosine's
    c = clarifying_question(searcher, text, hits, feats, ClarifyConfig(rescore_weight=0.0), force=True)
    assert c is not None and len(c.options) >= 2
    assert all(o.hit_ids == [h.id for h in hits] for o in c.options)
    c = clarifying_question(searcher, text, hits, feats, force=True)
    assert all(sorted(o.hit_ids) == sorted(h.id for h in hits) for o in c.options)


def test_evaluate_chat_ranks_by_the_gated_image_prior(searcher, test_corpus, small_datastore, effnet_minilm):
    from mmrag.encoders.image_prior import rerank_rows

    ids = searcher.ids()
    V = searcher.vectors(ids)
    prior, gate = effnet_minilm.image_prior(V), effnet_minilm.image_prior_gate()
    if prior is None:
        pytest.skip("the encoder has no image prior")
    assert np.allclose(prior, searcher.image_priors(ids), atol=1e-5)  # what the index stored
    targets = targets_from_items(test_corpus.items, {x: i for i, x in enumerate(ids)})
    Q = effnet_minilm.embed_texts([t.description for t in targets])
    S = Q @ V.T
    fired = prior[S.argmax(1)] > gate
    assert 0 < fired.sum() < len(targets)  # the gate fires for some descriptions, not all
    kw = dict(rounds=1, features=CaptionWordFeatures(small_datastore), progress=False)
    on = evaluate_chat(effnet_minilm, V, ids, targets, create_questioner("split"), image_prior=prior,
                       image_prior_gate=gate, **kw)
    off = evaluate_chat(effnet_minilm, V, ids, targets, create_questioner("split"), **kw)
    assert on["image_prior"] and not off["image_prior"]
    R = rerank_rows(S, prior, gate)

    def round0(M):  # Hits@1/5/10 and mean rank at round 0, recomputed from the scores
        r = np.array([int((M[i] > M[i, t.row]).sum()) + 1 for i, t in enumerate(targets)])
        return [round(100 * float((r <= k).mean()), 2) for k in (1, 5, 10)] + [round(float(r.mean()), 1)]

    def got(res):
        return [res[f"hits@{k}"][0] for k in (1, 5, 10)] + [res["mean_rank"][0]]

    assert round0(R) != round0(S)
    assert got(on) == pytest.approx(round0(R), abs=0.051)
    assert got(off) == pytest.approx(round0(S), abs=0.051)
    with pytest.raises(ChatEvalError, match="priors for"):
        evaluate_chat(effnet_minilm, V, ids, targets, create_questioner("split"), image_prior=prior[:3], **kw)
