"""The "cued" placement's parts on small hand-made documents: BM25 relevance, the heading weighted
in, the prior for sections that mention a figure, and the placement presets. Lexical relevance
only (``lexical_weight=1``), so no model is needed; the real code throughout."""

from __future__ import annotations

import numpy as np
import pytest

from mmrag.tasks.imageref import AnswerSection, ComposeConfig, ImageCandidate, place_images
from mmrag.tasks.imageref.compose import PLACEMENTS
from mmrag.tasks.imageref.insertion import Relevance, bm25_similarity, mentions_figure


def _placed(sections, images, config, relevance):
    return {p.index: p.image for p in place_images("Doc", sections, images, relevance, config=config) if p.image}


def _image(caption):
    return ImageCandidate("IMAGE_1", "x", "x.png", caption, matching_text=caption)


def test_mentions_figure_reads_the_cue_words_only():
    assert mentions_figure("The network is shown in Figure, left to right.")   # d2l's :numref: read as "Figure"
    assert mentions_figure("See fig. 3 for the layout.") and mentions_figure("The following diagram explains it.")
    assert mentions_figure("as shown below") and mentions_figure("This illustrates the idea.")
    assert not mentions_figure("Configure the figurehead, then run it.")     # words that only contain "figure"
    assert not mentions_figure("") and not mentions_figure("Install the package with pip.")


def test_bm25_rewards_term_frequency_and_short_sections():
    secs = ["slope slope of the raster", "slope of the raster",
            "slope of the raster computed from the elevation model with many more words around it",
            "installation with pip"]
    s = bm25_similarity(secs, ["slope map"])[:, 0]
    assert s[0] > s[1] > s[2] > 0 and s[3] == 0          # tf saturates upward; long sections normalised down
    assert bm25_similarity(["the a of"], ["and the"]).shape == (1, 1)   # stop words only: zeros, no error
    assert not bm25_similarity(["the a of"], ["and the"]).any()


def test_bm25_relevance_is_standardised_per_document():
    rel = Relevance(lexical_weight=1.0, lexical="bm25")
    r = rel.matrix([["slope map of the area"], ["aspect map"], ["install it"]], ["slope", "aspect"])
    assert r.shape == (3, 2) and abs(float(r.mean())) < 1e-6 and abs(float(r.std()) - 1) < 1e-5
    assert r[0, 0] == r[:, 0].max() and r[1, 1] == r[:, 1].max()
    with pytest.raises(ValueError, match="lexical"):
        Relevance(lexical_weight=1.0, lexical="bm26").matrix([["a b"]], ["a"])


SECTIONS = [AnswerSection("Sales", 2, "Sales by region. Sales by region per year, region by region."),
            AnswerSection("Results", 2, "Sales by region, as shown in the figure below."),
            AnswerSection("Installation", 2, "Install the package with pip and run the tests.")]


def test_a_section_that_mentions_a_figure_attracts_it():
    img = [_image("sales by region")]
    rel = Relevance(lexical_weight=1.0, lexical="bm25")
    cfg = ComposeConfig(placement="cued", lexical="bm25", lexical_weight=1.0, heading_weight=0.0, z_threshold=-5.0,
                        count_factor=0, empty_penalty=0.0, mention_bonus=0.0)
    assert _placed(SECTIONS, img, cfg, rel) == {1: "IMAGE_1"}     # the most matching text wins without the cue
    cfg.mention_bonus = 3.0
    assert _placed(SECTIONS, img, cfg, rel) == {2: "IMAGE_1"}     # the section that says "the figure below"
    cfg.placement = "calibrated"                                   # the calibrated rule has no cue
    assert _placed(SECTIONS, img, cfg, rel) == {1: "IMAGE_1"}


def test_the_section_length_prior_favours_a_section_that_explains():
    # a stub that names the caption's words beats a longer section without the prior, not with it
    secs = [AnswerSection("Keywords", 2, "raster, slope"),
            AnswerSection("Description", 2, "The module computes the slope of a raster elevation model, cell by "
                                             "cell, from the height differences to its eight neighbours, and writes "
                                             "it as a new map in degrees or percent."),
            AnswerSection("Authors", 2, "Written by the team.")]
    img = [_image("raster slope")]
    rel = Relevance(lexical_weight=1.0, lexical="bm25")
    cfg = ComposeConfig(placement="cued", lexical="bm25", lexical_weight=1.0, heading_weight=0.0, z_threshold=-5.0,
                        count_factor=0, empty_penalty=0.0, mention_bonus=0.0, length_weight=0.0)
    assert _placed(secs, img, cfg, rel) == {1: "IMAGE_1"}
    cfg.length_weight = 1.0
    assert _placed(secs, img, cfg, rel) == {2: "IMAGE_1"}
    cfg.placement = "calibrated"                                   # a cue of the cued rule only
    assert _placed(secs, img, cfg, rel) == {1: "IMAGE_1"}
    assert PLACEMENTS["cued"]["length_weight"] == 0.0             # measured, not adopted


def test_the_heading_weighted_in_can_outweigh_the_body_text():
    # the chunks carry their heading already; the body of the first says "slope" more often
    secs = [AnswerSection("Installation", 2, "Install the slope tool; the slope tool reads the map."),
            AnswerSection("Slope", 2, "The tool reads the map and writes a new one."),
            AnswerSection("Testing", 2, "Run the tests before a release.")]
    img = [_image("slope")]
    cfg = ComposeConfig(placement="cued", z_threshold=-5.0, count_factor=0, empty_penalty=0.0, mention_bonus=0.0)
    for lexical in ("tfidf", "bm25"):
        assert _placed(secs, img, cfg, Relevance(lexical_weight=1.0, lexical=lexical)) == {1: "IMAGE_1"}
        head = Relevance(lexical_weight=1.0, lexical=lexical, heading_weight=1.5)
        assert _placed(secs, img, cfg, head) == {2: "IMAGE_1"}   # the heading that names it wins
    with pytest.raises(ValueError, match="heading"):
        Relevance(lexical_weight=1.0, heading_weight=0.1).matrix([["a b"]], ["a"])


def test_placement_presets():
    assert ComposeConfig().placement == "global"          # composed answers (see ANSWER_PLACEMENT)
    cued = ComposeConfig(placement="cued").resolved()
    assert {k: getattr(cued, k) for k in PLACEMENTS["cued"]} == PLACEMENTS["cued"]
    cal = ComposeConfig(placement="calibrated", z_threshold=1.0).resolved()
    assert cal.z_threshold == 1.0 and cal.lexical == "tfidf" and cal.mention_bonus == 0.0   # a set field is kept
    assert (cal.lexical_weight, cal.pool, cal.count_factor, cal.empty_penalty) == (0.25, 0.0, 1.2, 2.0)
    glob = ComposeConfig(placement="global").resolved()
    assert glob.threshold == 0.15 and glob.lexical_weight == 0.25
    rel = cued.relevance()
    assert (rel.lexical, rel.lexical_weight, rel.heading_weight) == (cued.lexical, cued.lexical_weight,
                                                                      cued.heading_weight)
    with pytest.raises(ValueError, match="placement must be one of"):
        ComposeConfig(placement="bogus").resolved()
    assert np.isfinite(PLACEMENTS["cued"]["mention_bonus"])
