"""Captioning metrics (pycocoevalcap): known values, human agreement on Flickr8k, fallbacks."""

from __future__ import annotations

import pytest

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")

from mmrag.eval.caption_metrics import (  # noqa: E402
    CaptionMetricError,
    MeteorProcess,
    caption_scores,
    cider_d_per_image,
    find_java,
    ptb_tokenize,
    simple_ptb_tokenize,
)

HAVE_JAVA = find_java() is not None  # java on PATH, or $MMRAG_JAVA
needs_java = pytest.mark.skipif(not HAVE_JAVA, reason="Java is not installed (METEOR/PTB need it)")

# Six small images, five references each: enough images for CIDEr-D's idf to mean something.
REFS = {
    "dog": ["A black dog runs across the green grass .", "A dog is running on the grass .",
            "The black dog is running in a field .", "A dog runs through a grassy field .",
            "A black dog running outside ."],
    "kids": ["Two children play in the sand at the beach .", "Kids are playing on the beach .",
             "Two young kids dig in the sand .", "Children play in the sand near the ocean .",
             "Two kids at the beach playing in sand ."],
    "bike": ["A man rides a bike down a dirt road .", "A cyclist on a dirt path .",
             "A man riding his bicycle on a trail .", "A person bikes along a dirt road .",
             "A man on a mountain bike rides down a path ."],
    "climb": ["A woman climbs a rock wall .", "A rock climber scales a cliff .",
              "A woman is rock climbing .", "A climber on the side of a rocky cliff .",
              "A woman climbing up a large rock ."],
    "snow": ["A skier goes down a snowy hill .", "A person skiing down a mountain .",
             "Someone skis down the snow covered slope .", "A skier on a snowy mountain .",
             "A man skiing down a hill covered in snow ."],
    "boat": ["A red boat sails on the lake .", "A small boat on the water .",
             "A sailboat on a calm lake .", "A red sailboat in the water .",
             "A boat floats on a lake ."],
}


@pytest.fixture(scope="module")
def meteor():
    """One METEOR JVM for the module (starting one takes seconds: it loads a paraphrase table)."""
    if not HAVE_JAVA:
        yield None
        return
    m = MeteorProcess(timeout=120)
    yield m
    m.close()
    assert m._proc is None


@pytest.fixture(scope="module")
def identical_scores(meteor):
    """Each image predicted by its own first reference, scored against all five (METEOR too)."""
    preds = {k: v[0] for k, v in REFS.items()}
    return caption_scores(preds, REFS, metrics=("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"),
                          meteor=meteor)


def test_identical_caption_scores_high(identical_scores):
    s = identical_scores
    print({k: v for k, v in s.items() if k != "skipped"}, s["skipped"])
    assert s["n_images"] == 6
    assert s["BLEU-1"] == pytest.approx(100.0, abs=0.01)
    assert s["BLEU-4"] == pytest.approx(100.0, abs=0.01)
    assert s["ROUGE-L"] == pytest.approx(100.0, abs=0.01)
    assert s["CIDEr-D"] > 150.0  # one of the references matches exactly; the other four don't
    # SPICE either ran or says why not (CoreNLP jars are never downloaded by mmrag).
    assert ("SPICE" in s) != ("SPICE" in s["skipped"])
    if "SPICE" in s["skipped"]:
        assert "CoreNLP" in s["skipped"]["SPICE"] or "Java" in s["skipped"]["SPICE"]


@needs_java  # a skip, never silently fewer assertions (under CI=true the skip fails: conftest.py)
def test_identical_caption_scores_with_java(identical_scores):
    s = identical_scores
    assert s["tokenizer"] == "PTBTokenizer (Java)"
    assert "METEOR" not in s["skipped"], s["skipped"]
    assert s["METEOR"] > 60.0


def test_unrelated_caption_scores_near_zero():
    preds = {k: "purple elephants juggle violins underwater" for k in REFS}
    s = caption_scores(preds, REFS, metrics=("BLEU", "ROUGE_L", "CIDEr"))
    assert s["BLEU-1"] < 5 and s["BLEU-4"] < 1e-3
    assert s["ROUGE-L"] < 5
    assert s["CIDEr-D"] < 1.0
    assert "METEOR" not in s and s["skipped"] == {}


def test_better_caption_scores_higher():
    """Metrics must rank a close caption above a vague one (guards against a constant scorer)."""
    close = {k: v[1] for k, v in REFS.items()}
    vague = {k: "a picture of something outside ." for k in REFS}
    refs4 = {k: [r for i, r in enumerate(v) if i != 1] for k, v in REFS.items()}
    a = caption_scores(close, refs4, metrics=("BLEU", "CIDEr", "ROUGE_L"))
    b = caption_scores(vague, refs4, metrics=("BLEU", "CIDEr", "ROUGE_L"))
    for key in ("BLEU-1", "BLEU-4", "CIDEr-D", "ROUGE-L"):
        assert a[key] > b[key], key


def test_per_image_cider_matches_corpus_cider():
    preds = {k: v[2] for k, v in REFS.items()}
    preds["boat"] = "a dog on a boat"
    per = cider_d_per_image(preds, REFS)
    assert list(per) == list(preds)
    corpus = caption_scores(preds, REFS, metrics=("CIDEr",))["CIDEr-D"]
    assert sum(per.values()) / len(per) == pytest.approx(corpus, rel=1e-9)
    # the exact-reference predictions score well above the wrong one
    assert per["boat"] < min(v for k, v in per.items() if k != "boat")


@pytest.fixture(scope="module")
def flickr8k_human(flickr8k_dir):
    from mmrag.corpus.readers import read_corpus

    corpus = read_corpus("flickr8k", flickr8k_dir, split="test")
    items = [it for it in corpus.items if len(it.captions) >= 5][:50]
    assert len(items) == 50
    preds = {it.id: it.captions[0] for it in items}
    refs = {it.id: list(it.captions[1:]) for it in items}
    return preds, refs


@needs_java
def test_human_agreement_on_flickr8k_test(flickr8k_human, meteor):
    """One human caption against the other four, 50 Flickr8k test images.

    Human-vs-human agreement is well known to be modest (on COCO, human captions score about
    BLEU-4 22, METEOR 25, CIDEr-D 85 against the other references); Flickr8k behaves alike. A
    wrong tokenisation, a broken scorer or a ×100 slip lands far outside these ranges.
    """
    preds, refs = flickr8k_human
    s = caption_scores(preds, refs, metrics=("BLEU", "METEOR", "ROUGE_L", "CIDEr"), meteor=meteor)
    print("human vs human, 50 Flickr8k test images:",
          {k: round(v, 1) for k, v in s.items() if isinstance(v, float)})
    assert s["n_images"] == 50
    assert 45 < s["BLEU-1"] < 80
    assert 8 < s["BLEU-4"] < 35
    assert 35 < s["ROUGE-L"] < 65
    assert 35 < s["CIDEr-D"] < 140
    assert 15 < s["METEOR"] < 35
    per = cider_d_per_image(preds, refs)
    assert sum(per.values()) / 50 == pytest.approx(s["CIDEr-D"], rel=1e-9)


def test_python_tokenizer_mimics_ptb():
    assert simple_ptb_tokenize('A dog\'s "toy" (red) -- runs.') == "a dog 's toy -lrb- red -rrb- runs"
    assert simple_ptb_tokenize("Two dogs, can't stop!  50%") == "two dogs ca n't stop 50 %"
    assert simple_ptb_tokenize("A tri-colored dog ...") == "a tri-colored dog"


@needs_java
def test_python_tokenizer_agrees_with_java_on_real_captions(flickr8k_human):
    preds, refs = flickr8k_human
    caps = list(preds.values()) + [r for rs in refs.values() for r in rs]
    java, how = ptb_tokenize(caps)
    assert how == "PTBTokenizer (Java)"
    same = sum(a == simple_ptb_tokenize(c) for a, c in zip(java, caps))
    assert same >= 0.97 * len(caps), f"{same}/{len(caps)}"


def test_without_java_falls_back_and_skips_meteor():
    preds = {k: v[0] for k, v in REFS.items()}
    s = caption_scores(preds, REFS, metrics=("BLEU", "METEOR", "CIDEr", "SPICE"), java=None)
    assert s["tokenizer"].startswith("python fallback")
    assert "METEOR" not in s and "Java" in s["skipped"]["METEOR"]
    assert "SPICE" in s["skipped"]
    assert s["BLEU-4"] == pytest.approx(100.0, abs=0.01)
    s2 = caption_scores(preds, REFS, metrics=("METEOR",), java="/nonexistent/java")
    assert "METEOR" in s2["skipped"]


@needs_java
def test_meteor_process_survives_awkward_input(meteor):
    # "|||" is METEOR's field separator and a newline ends a request: both must be neutralised,
    # or the answers shift by one and the next read hangs.
    corpus, per = meteor.score(
        ["a dog ||| runs\non grass", "", "a cat"],
        [["a dog runs on the grass"], ["a man"], ["a dog", "a cat sits"]],
    )
    assert len(per) == 3 and per[0] > 0.3 and per[1] == 0.0 and per[2] > 0.2
    assert 0.0 < corpus < 1.0
    # the process stays usable and in step
    corpus2, per2 = meteor.score(["a dog", "zebra"], [["a dog"], ["a red car"]])
    assert per2[0] > 0.9 and per2[1] == 0.0


@needs_java
def test_meteor_dead_process_is_an_error_not_a_hang(meteor):
    m = MeteorProcess(memory="1G", timeout=60)
    m._proc.kill()
    m._proc.wait()
    with pytest.raises(CaptionMetricError, match="METEOR"):
        m.score(["a dog"], [["a dog"]])
    m.close()
    assert m._proc is None


def test_bad_input_is_a_clear_error():
    with pytest.raises(CaptionMetricError, match="no reference"):
        caption_scores({"x": "a dog"}, {"y": ["a dog"]}, metrics=("BLEU",))
    with pytest.raises(CaptionMetricError, match="no predictions"):
        caption_scores({}, REFS)
    with pytest.raises(CaptionMetricError, match="unknown captioning metric"):
        caption_scores({"dog": "a dog"}, REFS, metrics=("WER",))
