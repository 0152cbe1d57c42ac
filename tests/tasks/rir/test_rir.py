"""RIR answering: normalisation and metrics, VQA readers, providers, the knn answerer and the
pipeline on a small real VQA-RAD index (effnet-minilm), the evaluation and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import CorpusError, ModelUnavailableError
from mmrag.tasks.rir import (
    AnswererError,
    AnswerRequest,
    KnnAnswerer,
    KnnConfig,
    ProviderUnavailableError,
    QABank,
    RIRPipeline,
    answer_in_prediction,
    closed_form,
    create_provider,
    exact_match,
    index_vqa,
    normalize_answer,
    qa_corpus,
    read_vqa,
    read_vqa_jsonl,
    read_vqa_rad,
    split_by_image,
)
from mmrag.tasks.rir.evaluate import bootstrap_ci, compare, evaluate_vqa, score_question, summarize
from mmrag.corpus.vqa_rad import VQADataset

REPO = Path(__file__).resolve().parents[3]
# Twelve train images that test questions are also asked about (11 chest, 1 head).
SMALL = ["synpic100176.jpg", "synpic100228.jpg", "synpic12210.jpg", "synpic13385.jpg", "synpic16170.jpg",
         "synpic16174.jpg", "synpic16221.jpg", "synpic16407.jpg", "synpic16520.jpg", "synpic16810.jpg",
         "synpic17664.jpg", "synpic17675.jpg"]


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Question vectors and eval indexes go to a throw-away cache, not the user's."""
    old = os.environ.get("MMRAG_CACHE")
    os.environ["MMRAG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MMRAG_CACHE", None)
    else:
        os.environ["MMRAG_CACHE"] = old


@pytest.fixture(scope="module")
def small_train(vqa_rad_dir) -> VQADataset:
    train = read_vqa_rad(vqa_rad_dir, "train")
    return VQADataset("small", [q for q in train.questions if q.image_id in SMALL])


@pytest.fixture(scope="module")
def small_index(small_train, effnet_minilm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rir") / "idx"
    rep = index_vqa(small_train, out, effnet_minilm, progress=False)
    assert rep.added == len(SMALL)
    return out


@pytest.fixture(scope="module")
def pipeline(small_index, effnet_minilm):
    p = RIRPipeline(create_provider("index", index_dir=small_index, encoder=effnet_minilm), answerer="knn", k=3)
    yield p
    p.close()


# --------------------------------------------------------------------------- normalisation, metrics


def test_normalize_answer():
    assert normalize_answer("The Left Lung.") == "left lung"
    assert normalize_answer("  Two  ") == "2"
    assert normalize_answer("1.5 cm") == "1.5 cm"
    assert normalize_answer("T2-weighted, MRI!") == "t2 weighted mri"
    assert normalize_answer("An X-ray") == "x ray"


def test_closed_form_and_metrics():
    assert closed_form("Yes, there is a mass.") == "yes"
    assert closed_form("No.") == "no" and closed_form("There is no mass") == "no"
    assert closed_form("left kidney") == "left kidney"
    assert exact_match("Yes, it is", ["yes"]) and not exact_match("no", ["Yes"])
    assert exact_match("the PA view", ["pa view"]) and not exact_match("pa view lateral", ["pa view"])
    assert answer_in_prediction("an MRI of the brain", ["MRI"])
    assert not answer_in_prediction("mri", ["mr"])  # whole words only
    assert not answer_in_prediction("", ["ct"])


def _rec(answer_type, qt, pred, gold):
    from mmrag.corpus.vqa_rad import VQAQuestion

    return score_question(VQAQuestion("1", Path("x.jpg"), "x.jpg", "q?", [gold], answer_type, qt), pred)


def test_summarize_and_paired_bootstrap():
    rir = [_rec("CLOSED", "PRES", "yes", "yes"), _rec("CLOSED", "PRES", "no", "yes"),
           _rec("OPEN", "ORGAN", "the brain", "brain"), _rec("OPEN", "ORGAN", "lung", "liver")]
    base = [_rec("CLOSED", "PRES", "no", "yes"), _rec("CLOSED", "PRES", "no", "yes"),
            _rec("OPEN", "ORGAN", "heart", "brain"), _rec("OPEN", "ORGAN", "lung", "liver")]
    s = summarize(rir, n_boot=500)
    assert (s["n"], s["n_closed"], s["n_open"]) == (4, 2, 2)
    assert s["closed_acc"] == 50.0 and s["open_recall"] == 50.0 and s["overall"] == 50.0
    lo, hi = s["closed_acc_ci95"]
    assert 0.0 <= lo <= 50.0 <= hi <= 100.0
    assert s["per_question_type"]["ORGAN"] == {"n": 2, "closed_acc": None, "open_recall": 50.0, "overall": 50.0}
    c = compare(rir, base, n_boot=500)
    assert c["gain"]["overall"]["points"] == 50.0
    assert c["gain"]["closed_acc"]["ci95"][0] >= 0.0  # RIR never worse on any resample here
    vals = np.array([1.0, 1.0, 1.0]); assert bootstrap_ci(vals, vals > 0) == [100.0, 100.0]


# --------------------------------------------------------------------------- readers


def test_read_vqa_rad(vqa_rad_dir):
    test = read_vqa_rad(vqa_rad_dir, "test")
    assert len(test) == 451 and not test.skipped
    assert sum(q.answer_type == "CLOSED" for q in test.questions) == 272
    q = test.questions[0]
    assert q.image.is_file() and q.image_id == q.image.name and q.answers and q.metadata["image_organ"]
    with pytest.raises(CorpusError, match="splits"):
        read_vqa_rad(vqa_rad_dir, "dev")
    with pytest.raises(CorpusError, match="does not look like VQA-RAD"):
        read_vqa_rad(vqa_rad_dir / "images")


def test_read_vqa_jsonl_skips_bad_rows(vqa_rad_dir, tmp_path):
    img = vqa_rad_dir / "images" / SMALL[0]
    lines = [
        json.dumps({"image": str(img), "question": "Is there a mass?", "answers": ["No"]}),
        "{not json",
        json.dumps({"image": str(img), "question": "Which organ?", "answer": "lung", "question_type": "ORGAN"}),
        json.dumps({"image": "missing.jpg", "question": "Is it?", "answers": ["yes"]}),
        json.dumps({"image": str(img), "answers": ["yes"]}),
        json.dumps({"image": str(img), "question": "Size?", "answers": "3 cm", "answer_type": "open"}),
    ]
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = read_vqa("jsonl", f)
    assert [q.question for q in ds.questions] == ["Is there a mass?", "Which organ?", "Size?"]
    assert [q.answer_type for q in ds.questions] == ["CLOSED", "OPEN", "OPEN"]
    assert ds.questions[1].answers == ["lung"] and ds.questions[1].question_type == "ORGAN"
    reasons = " | ".join(s.reason for s in ds.skipped)
    assert "not valid JSON" in reasons and "file not found" in reasons and "no 'question'" in reasons
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"image": "x.jpg", "question": "caf\xe9?", "answers": ["yes"]}\n')
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        read_vqa_jsonl(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no usable questions"):
        read_vqa_jsonl(empty)
    with pytest.raises(CorpusError, match="no such file"):
        read_vqa_jsonl(tmp_path / "nope.jsonl")


def test_split_by_image_and_qa_corpus(vqa_rad_dir, small_train):
    train = read_vqa_rad(vqa_rad_dir, "train")
    fit, dev = split_by_image(train, 0.2, seed=0)
    assert len(fit) + len(dev) == len(train)
    assert not set(fit.image_ids()) & set(dev.image_ids())
    assert len(dev.image_ids()) == round(0.2 * len(train.image_ids()))
    assert split_by_image(train, 0.2, seed=0)[1].image_ids() == dev.image_ids()
    corpus = qa_corpus(small_train)
    assert [it.id for it in corpus.items] == sorted(SMALL)
    item = corpus.items[0]
    assert len(item.metadata["qa"]) == sum(q.image_id == item.id for q in small_train.questions)
    assert {"question", "answer", "answer_type", "question_type"} <= set(item.metadata["qa"][0])


# --------------------------------------------------------------------------- providers, answerers, pipeline


def test_web_provider_is_a_documented_slot():
    with pytest.raises(ProviderUnavailableError, match="slot"):
        create_provider("web")
    with pytest.raises(KeyError, match="available: index, web"):
        create_provider("bing")


def test_index_provider_finds_the_image_and_can_exclude_it(pipeline, vqa_rad_dir):
    img = vqa_rad_dir / "images" / SMALL[3]
    hits = pipeline.provider.search(img, k=3)
    assert hits[0].id == SMALL[3] and hits[0].similarity > 0.99
    assert hits[0].qa and all("question" in p for p in hits[0].qa)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    others = pipeline.provider.search(img, k=3, exclude_same_bytes=True)
    assert len(others) == 3 and SMALL[3] not in [h.id for h in others]
    assert SMALL[3] not in [h.id for h in pipeline.provider.search(img, k=3, exclude_ids=[SMALL[3]])]


def test_knn_answer_comes_from_the_neighbours_qa(pipeline, vqa_rad_dir):
    img = vqa_rad_dir / "images" / "synpic100176.jpg"
    # Its train QA says "Is this a PA or AP film?" -> "PA"; only RIR can know it.
    a = pipeline.ask(img, "Is this a PA or AP film?", k=1)
    assert a.answer == "pa" and a.rir and a.evidence[0].id == "synpic100176.jpg"
    assert any("PA or AP" in t for t in a.evidence[0].texts)  # most relevant QA pair shown first
    assert a.evidence[0].texts[0].startswith("Q: Is this a PA or AP film?")
    assert a.details["votes"][0]["answer"] == "pa"
    d = json.loads(json.dumps(a.to_dict()))
    assert d["answer"] == "pa" and d["evidence"][0]["id"] == "synpic100176.jpg" and "similarity" in d["cues"]
    # Without RIR the answer cannot depend on the image: the same for any image.
    b1 = pipeline.ask(img, "Is this a PA or AP film?", rir=False)
    b2 = pipeline.ask(vqa_rad_dir / "images" / SMALL[8], "Is this a PA or AP film?", rir=False)
    assert b1.evidence == [] and b1.cues == "" and b1.answer == b2.answer
    # With the query image treated as unseen, neither its neighbours nor its QA pairs are used.
    c = pipeline.ask(img, "Is this a PA or AP film?", exclude_same_image=True)
    assert "synpic100176.jpg" not in [e.id for e in c.evidence]
    with pytest.raises(ValueError, match="empty question"):
        pipeline.ask(img, "  ")


def test_knn_mix_zero_equals_no_rir(pipeline, effnet_minilm, vqa_rad_dir):
    img = vqa_rad_dir / "images" / SMALL[5]
    qv = effnet_minilm.embed_texts(["Is the heart enlarged?"])[0]
    neigh = pipeline.provider.search(img, k=3)
    off = KnnAnswerer(pipeline.bank, KnnConfig(mix=0.0)).answer(AnswerRequest("q", qv, neighbours=neigh))
    none = KnnAnswerer(pipeline.bank, KnnConfig(mix=0.9)).answer(AnswerRequest("q", qv))
    assert off.text == none.text and off.details["votes"] == none.details["votes"]


def test_knn_needs_qa_pairs(effnet_minilm):
    empty = QABank.from_metadata([("a.jpg", {"captions": ["a dog"]})], effnet_minilm)
    with pytest.raises(AnswererError, match="QA pairs"):
        KnnAnswerer(empty).answer(AnswerRequest("Is it a dog?", np.ones(384, np.float32) / np.sqrt(384)))


@pytest.mark.slow
def test_generator_answerer_with_local_model(pipeline, vqa_rad_dir):
    from mmrag.tasks.rir import GeneratorAnswerer
    from mmrag.tasks.rir.answerers import build_prompt

    try:
        gen = GeneratorAnswerer("local", max_tokens=8)
    except ModelUnavailableError as e:
        pytest.skip(f"local generator unavailable: {e}")
    p = RIRPipeline(pipeline.provider, answerer=gen, bank=pipeline.bank)
    assert p.k == 5  # generators read fewer neighbours than knn
    a = p.ask(vqa_rad_dir / "images" / "synpic100176.jpg", "Is this a PA or AP film?", k=2)
    assert a.answer.strip() and a.answerer.startswith("generator:") and len(a.evidence) == 2
    prompt = a.details["prompt"]
    assert prompt.startswith("Similar images found by reverse image search") and "synpic100176.jpg" in prompt
    assert prompt.endswith("Question: Is this a PA or AP film?\nAnswer:")
    assert build_prompt("Is this a PA or AP film?", None) == "Question: Is this a PA or AP film?\nAnswer:"


# --------------------------------------------------------------------------- evaluation, CLI


def test_evaluate_both_settings(pipeline, vqa_rad_dir):
    test = read_vqa_rad(vqa_rad_dir, "test")
    sub = VQADataset("t", [q for q in test.questions if q.image_id in SMALL][:12])
    res = evaluate_vqa(pipeline, sub, k=3, n_boot=200, progress=False)
    inc, exc = res["records"]["query_image_included"], res["records"]["query_image_excluded"]
    assert all(r["evidence_ids"][0] == r["image_id"] for r in inc["rir"])
    assert all(r["image_id"] not in r["evidence_ids"] for r in exc["rir"])
    assert all(r["evidence_ids"] == [] for r in exc["no_rir"] + inc["no_rir"])
    s = res["settings"]["query_image_included"]
    assert s["rir"]["n"] == len(sub) and set(s["gain"]) >= {"closed_acc", "overall"}
    # Seeing the image's own train QA pairs beats answering blind on these paraphrased questions.
    assert s["rir"]["overall"] >= s["no_rir"]["overall"]


def _cli(*args):
    """The installed entry point in a subprocess: exit codes and clean error messages."""
    return subprocess.run([sys.executable, "-m", "mmrag.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}, timeout=300)


def _invoke(*args):
    """The same app in-process (models load once per test session, not per command)."""
    from typer.testing import CliRunner

    from mmrag.cli import app

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def test_cli_ask_and_eval_ask(small_index, vqa_rad_dir, tmp_path):
    img = vqa_rad_dir / "images" / "synpic100176.jpg"
    r = _invoke("ask", str(img), "Is this a PA or AP film?", "--index", str(small_index), "-k", "1", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["answer"] == "pa" and d["evidence"][0]["id"] == "synpic100176.jpg"
    r = _invoke("ask", str(img), "Is this a PA or AP film?", "--index", str(small_index), "-k", "2")
    assert r.exit_code == 0 and "synpic100176.jpg" in r.stdout and "Q: Is this a PA or AP film? A: PA" in r.stdout

    # eval ask on a generic JSONL pair: train rows are indexed with their QA, test rows scored.
    train = read_vqa_rad(vqa_rad_dir, "train")
    test = read_vqa_rad(vqa_rad_dir, "test")
    rows = lambda qs: "\n".join(json.dumps({"image": str(q.image), "question": q.question, "answers": q.answers,
                                            "image_id": q.image_id}) for q in qs) + "\n"
    (tmp_path / "train.jsonl").write_text(rows([q for q in train.questions if q.image_id in SMALL[:6]]))
    (tmp_path / "test.jsonl").write_text(rows([q for q in test.questions if q.image_id in SMALL[:6]]))
    out = tmp_path / "rep.json"
    r = _invoke("eval", "ask", "--dataset", "jsonl", "--train", str(tmp_path / "train.jsonl"), "--test",
                str(tmp_path / "test.jsonl"), "--n-boot", "100", "--json", str(out))
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["n_questions"] == sum(q.image_id in SMALL[:6] for q in test.questions)
    assert set(rep["closed_acc"]) == {"rir", "no_rir"} and set(rep["open_recall"]) == {"rir", "no_rir"}
    assert rep["headline_setting"] == "query_image_excluded" and "query_image_included" in rep["settings"]
    from mmrag.tasks.rir import DEFAULT_K

    assert rep["k"] == DEFAULT_K and "overall" in r.stdout


def test_cli_errors_are_clean(small_index, vqa_rad_dir, tmp_path):
    img = vqa_rad_dir / "images" / "synpic100176.jpg"
    r = _cli("ask", str(img), "Is this a PA or AP film?", "--provider", "web")
    assert r.returncode == 2 and "slot" in r.stderr and "Traceback" not in r.stderr
    r = _cli("ask", str(tmp_path / "no.jpg"), "What?", "--index", str(small_index))
    assert r.returncode == 2 and "no such image" in r.stderr
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": str(img), "question": "Q?", "answers": ["yes"]}) + "\n")
    r = _cli("eval", "ask", "--dataset", "jsonl", "--test", str(tmp_path / "t.jsonl"))
    assert r.returncode == 2 and "--train" in r.stderr and "Traceback" not in r.stderr


def test_captions_answerer_reads_the_neighbours_captions():
    from mmrag.tasks.rir import CaptionAnswerer, Neighbour, auto_answerer

    near = [Neighbour("a", 0.9, captions=["Two dogs run on the grass ."]),
            Neighbour("b", 0.8, captions=["A brown dog is running .", "A dog plays outside ."]),
            Neighbour("c", 0.5, captions=["A man rides a bike ."])]
    a = CaptionAnswerer()
    assert a.answer(AnswerRequest("Is there a dog?", neighbours=near)).text == "yes"
    assert a.answer(AnswerRequest("Are there dogs?", neighbours=near)).text == "yes"  # plural matches
    assert a.answer(AnswerRequest("Are there any bikes in the picture?", neighbours=near)).text == "no"
    what = a.answer(AnswerRequest("What is happening?", neighbours=near))
    assert what.text in {c for n in near for c in n.captions} and "consensus" in what.details["method"]
    with pytest.raises(AnswererError, match="captions"):
        a.answer(AnswerRequest("Is there a dog?", neighbours=[Neighbour("d", 0.9)]))
    # auto: knn with QA pairs, captions without; neither: an error that says what to do
    assert auto_answerer(None, 3) == "captions"
    with pytest.raises(AnswererError, match="neither QA pairs nor captions"):
        auto_answerer(None, 0)


def test_cues_carry_the_text_read_in_a_neighbour(sign_ocr_index, sign_folder, effnet_minilm):
    """A neighbour indexed with --ocr shows its words as a cue line; one without text shows none."""
    from mmrag.tasks.rir.cues import OCR_CUE_CHARS, build_cue_block, ocr_cue

    prov = create_provider("index", index_dir=sign_ocr_index, encoder=effnet_minilm)
    try:
        near = prov.search(sign_folder / "photo_0.jpg", k=4)
    finally:
        prov.close()
    cues = build_cue_block(near)
    by_id = {e.id: e.texts for e in cues.items}
    sign = [t for t in by_id["photo_0.jpg"] if t.startswith("text in image: ")]
    assert len(sign) == 1 and "HARBORBOOKS" in sign[0].upper().replace(" ", ""), by_id
    assert f"  - {sign[0]}" in cues.text
    assert not any(t.startswith("text in image") for t in by_id["photo_2.jpg"] + by_id["photo_3.jpg"]), by_id
    # bounded: a page of text is cut at a word, marked
    long = ocr_cue({"ocr_text": "\n".join(["LINE OF WORDS WRITTEN ON A SLIDE"] * 40)})
    assert long.endswith(" ...") and len(long) <= len("text in image: ") + OCR_CUE_CHARS + 4
    assert ocr_cue({"ocr_text": "A\nB"}) == "text in image: A / B" and ocr_cue({"ocr_text": ""}) is None
