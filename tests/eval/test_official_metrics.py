"""Metrics against the papers' official code on identical inputs (docs/metrics.md).

* ImageRef-VL: every non-null value of ``../shared/fixtures/imageref_official_cases.json``
  (computed by the official ``ipp_eval.py``), and its dropping of malformed samples;
* ChatIR: the replayed query text is ChatIR's ``", ".join(dialog[:r + 1])``, byte for byte, on
  every shared dialog file;
* coco-caption: CIDEr-D (and BLEU, ROUGE-L) keep an empty reference caption as pycocoevalcap does.
"""

from __future__ import annotations

import json
import math

import pytest

from mmrag.eval.image_position import (
    MalformedPredictionError,
    evaluate_positions,
    evaluate_predictions,
    position_score,
    precision,
    recall_lenient,
    recall_strict,
    results_from_predictions,
    sample_metrics,
)

# --------------------------------------------------------------------------- ImageRef-VL


@pytest.fixture(scope="module")
def imageref_cases(data_dir) -> list[dict]:
    path = data_dir.parent / "fixtures" / "imageref_official_cases.json"  # ../shared/fixtures
    if not path.exists():
        pytest.skip("../shared/fixtures/imageref_official_cases.json is absent")
    return json.loads(path.read_text(encoding="utf-8"))


METRICS = {"R_lenient": recall_lenient, "R_strict": recall_strict, "P": precision, "score": position_score}


def test_imageref_metrics_reproduce_every_official_value(imageref_cases):
    assert len(imageref_cases) == 432
    checked, wrong = 0, []
    for case in imageref_cases:
        for key, want in case["official"].items():
            if want is None:
                continue  # depends on the hash seed, or the official code raised
            got = METRICS[key](case["labels"], case["results"])
            ok = math.isnan(got) if want == "nan" else got == pytest.approx(want, rel=1e-12, abs=1e-12)
            checked += 1
            if not ok:
                wrong.append((case["name"], key, want, got))
        if "official_error" in case:  # the deliberate deviation: a clear error, not an IndexError
            with pytest.raises(ValueError, match="1..2"):
                position_score(case["labels"], case["results"])
    assert checked == 1618  # 432 cases x 4 metrics, less the 110 seed-dependent / failed scores
    assert not wrong, wrong[:10]


def test_imageref_edge_cases_named_in_the_issue(imageref_cases):
    by_name = {c["name"]: c for c in imageref_cases}
    # rows of the score's matrix come from the number in "<Position N>", not from label order
    c = by_name["24 labels out of order (P2 first), mixed"]
    assert position_score(c["labels"], c["results"]) == 0.75
    # a falsy image id counts in recall, not in precision and score
    c = by_name["25 int image id 0 (falsy)"]
    assert sample_metrics(c["labels"], c["results"]) == {"R_lenient": 1.0, "R_strict": 1.0, "P": 1.0, "score": 0.5}
    # int position keys (mmrag's own tasks) are numbered the same way
    labels = {2: {"3": [], "2": [], "1": ["x"]}, 1: {"3": ["x"], "2": [], "1": ["y"]}}
    assert position_score(labels, {1: "x"}) == 0.75
    # the reference denominator can fall below the best assignment: scores above 1
    assert position_score({1: {"3": [], "2": [], "1": ["x"]}, 2: {"3": ["x"], "2": [], "1": []}}, {2: "x"}) == 3.0


def test_imageref_dataset_means_are_over_the_scored_samples(imageref_cases):
    full = [c for c in imageref_cases if all(v is not None and v != "nan" for v in c["official"].values())]
    res = evaluate_positions([(c["labels"], c["results"]) for c in full])
    assert res["n"] == len(full) and res["n_dropped"] == 0
    for key in METRICS:
        assert res[key] == pytest.approx(sum(c["official"][key] for c in full) / len(full), rel=1e-12)
    assert res["F1"] == pytest.approx(2 * res["P"] * res["R_strict"] / (res["P"] + res["R_strict"]))


def test_malformed_predictions_drop_the_sample_as_the_official_means_do():
    images = ["a.jpg", "b.jpg"]
    labels = {"<Position 1>": {"3": ["a.jpg"], "2": [], "1": []}, "<Position 2>": {"3": ["b.jpg"], "2": [], "1": []}}
    good = [{"position": "<Position 1>", "image": "IMAGE_1"}, {"position": "<Position 2>", "image": "Not Insert"}]
    malformed = {
        "out of range": [{"position": "<Position 1>", "image": "IMAGE_3"}],
        "lower-case not insert": [{"position": "<Position 1>", "image": "IMAGE_1"},
                                  {"position": "<Position 2>", "image": "not insert"}],
        "no image key": [{"position": "<Position 1>"}],
        "null image": [{"position": "<Position 1>", "image": None}],
        "no position": [{"image": "IMAGE_2"}],
        "IMAGE_0 (deviation)": [{"position": "<Position 1>", "image": "IMAGE_0"}],
        "JSON without predictions": json.dumps({"answer": "..."}),
        "JSON that does not parse": '{"predictions": [',
    }
    for why, preds in malformed.items():
        with pytest.raises(MalformedPredictionError):
            results_from_predictions(preds, images)
    # the official model-output form is read too
    assert results_from_predictions(json.dumps({"predictions": good}), images) == {"<Position 1>": "a.jpg"}
    samples = [(labels, good, images)] + [(labels, p, images) for p in malformed.values()]
    with pytest.warns(UserWarning, match="dropped"):
        res = evaluate_predictions(samples)
    assert res["n_samples"] == 9 and res["n"] == 1 and res["n_dropped"] == 8
    assert [d["index"] for d in res["dropped"]] == list(range(1, 9))
    assert "8 of 9 samples dropped" in res["note"]
    assert res["R_strict"] == 0.5 and res["P"] == 1.0 and res["score"] == 0.5  # the good sample alone
    with pytest.raises(ValueError, match="all 1 were dropped"):
        evaluate_predictions([(labels, malformed["out of range"], images)])


# --------------------------------------------------------------------------- ChatIR


def test_chatir_replay_query_text_is_the_raw_join_on_every_dialog_file(data_dir):
    from mmrag.tasks.chat.evaluate import dialogs_at_round, load_chatir_dialogs
    from mmrag.tasks.chat.ranking import query_texts

    files = sorted((data_dir / "chatir" / "dialogues").glob("*.json"))
    if not files:
        pytest.skip("../shared/data/chatir/dialogues is absent")
    assert len(files) == 5
    total = 0
    for f in files:
        raw = [row["dialog"] for row in json.loads(f.read_text(encoding="utf-8"))]
        dialogs = [d for _, d in load_chatir_dialogs(f)]
        rounds = max(len(r) for r in raw)
        for r in range(rounds):
            texts = [query_texts(d, "chatir")[0] for d in dialogs_at_round(dialogs, r)]
            want = [", ".join(dialog[: r + 1]) for dialog in raw]
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(texts, want)) if a.encode("utf-8") != b.encode("utf-8")]
            assert not bad, (f.name, r, bad[:3])
            total += len(texts)
    assert total == 5 * 22_704
    # the description too stays as recorded (no shared file has one with surrounding spaces)
    from mmrag.tasks.chat.dialog import Dialog

    raw = [" a dog on grass ", "is it running away?) yes", "a ball"]
    (d,) = dialogs_at_round([Dialog.from_chatir(raw)], 2)
    assert query_texts(d, "chatir") == [", ".join(raw)]


# --------------------------------------------------------------------------- coco-caption


@pytest.fixture(scope="module")
def twenty_with_empty_refs(flickr8k_dir):
    """20 Flickr8k test images: one human caption predicts, the other four are the references,
    eight of which are made empty ("" or spaces, among them an image's last reference)."""
    from mmrag.corpus.readers import read_corpus

    items = [it for it in read_corpus("flickr8k", flickr8k_dir, split="test").items if len(it.captions) >= 5][:20]
    preds = {it.id: it.captions[0] for it in items}
    refs = {it.id: list(it.captions[1:5]) for it in items}
    for j, it in enumerate(items[:8]):
        refs[it.id][j % 4] = "" if j % 2 == 0 else "   "
    return preds, refs


def _coco_reference(preds, refs, tokenize):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = tokenize(refs, preds)
    cider = 100 * float(Cider().compute_score(gts, res)[0])
    dropped = {k: [c for c in v if c] for k, v in gts.items()}
    cider_dropped = 100 * float(Cider().compute_score(dropped, res)[0])
    bleu = [100 * float(b) for b in Bleu(4).compute_score(gts, res, verbose=0)[0]]
    rouge = 100 * float(Rouge().compute_score(gts, res)[0])
    return cider, cider_dropped, bleu, rouge


def _check_against_coco(s, reference):
    cider, cider_dropped, bleu, rouge = reference
    assert s["n_empty_references"] == 8
    assert s["CIDEr-D"] == pytest.approx(cider, rel=1e-12)
    assert abs(cider - cider_dropped) > 5  # dropping the empty references would show
    for n in range(4):
        assert s[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], rel=1e-12)
    assert s["ROUGE-L"] == pytest.approx(rouge, rel=1e-12)


def test_cider_d_keeps_empty_references_like_coco_caption(twenty_with_empty_refs):
    """Python tokeniser on both sides (runs without Java)."""
    pytest.importorskip("pycocoevalcap")
    from mmrag.eval.caption_metrics import caption_scores, cider_d_per_image, simple_ptb_tokenize

    preds, refs = twenty_with_empty_refs

    def tokenize(refs, preds):
        return ({k: [simple_ptb_tokenize(c) for c in v] for k, v in refs.items()},
                {k: [simple_ptb_tokenize(preds[k])] for k in preds})

    s = caption_scores(preds, refs, metrics=("BLEU", "ROUGE_L", "CIDEr"), java=None)
    assert s["tokenizer"].startswith("python fallback")
    _check_against_coco(s, _coco_reference(preds, refs, tokenize))
    per = cider_d_per_image(preds, refs, java=None)
    assert sum(per.values()) / len(per) == pytest.approx(s["CIDEr-D"], rel=1e-12)


def test_cider_d_keeps_empty_references_like_coco_caption_with_ptb(twenty_with_empty_refs):
    """coco-caption's own pipeline: its PTBTokenizer (Java), then its scorers."""
    pytest.importorskip("pycocoevalcap")
    from mmrag.eval.caption_metrics import caption_scores, find_java

    if find_java() is None:
        pytest.skip("Java is not installed (PTBTokenizer needs it)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds, refs = twenty_with_empty_refs

    def tokenize(refs, preds):
        tok = PTBTokenizer()
        return (tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()}),
                tok.tokenize({k: [{"caption": preds[k]}] for k in preds}))

    s = caption_scores(preds, refs, metrics=("BLEU", "ROUGE_L", "CIDEr"))
    assert s["tokenizer"] == "PTBTokenizer (Java)"
    _check_against_coco(s, _coco_reference(preds, refs, tokenize))


def test_caption_references_that_cannot_be_scored_are_errors():
    from mmrag.eval.caption_metrics import CaptionMetricError, caption_scores

    with pytest.raises(CaptionMetricError, match="only empty"):
        caption_scores({"x": "a dog"}, {"x": ["", "  "]}, metrics=("CIDEr",), java=None)
    with pytest.raises(CaptionMetricError, match="not a string"):
        caption_scores({"x": "a dog"}, {"x": ["a dog", None]}, metrics=("CIDEr",), java=None)
