"""Positions that take several images (``capacity`` > 1, issue #17) on small hand-made documents:
the exact slot assignment, the capacity read from a section's own text, the old rule at capacity
1, and valid references in the Markdown. Lexical relevance only (no model); the real code."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmrag.corpus.documents import DocImage, Document, Section
from mmrag.tasks.imageref import AnswerSection, ComposeConfig, ImageCandidate, evaluate_figure_positions, place_images
from mmrag.tasks.imageref.compose import PLACEMENTS, build_markdown
from mmrag.tasks.imageref.insertion import Relevance, assign_images, assign_slots, figure_mentions, section_capacity
from mmrag.tasks.imageref.render import find_references, invalid_references

REL = Relevance(lexical_weight=1.0, lexical="bm25")
# a section that cites two figures, one about something else, one that cites none
SECTIONS = [AnswerSection("Rivers", 2, "The river network and the river basins of the region. Figure shows the "
                                       "network; the other one is in the figure after it."),
            AnswerSection("Roads", 2, "The road map of the region, every road by its class."),
            AnswerSection("History", 2, "The region was settled in the early middle ages.")]
IMAGES = [ImageCandidate("IMAGE_1", "a", "a.png", "river network", matching_text="river network"),
          ImageCandidate("IMAGE_2", "b", "b.png", "river basins", matching_text="river basins"),
          ImageCandidate("IMAGE_3", "c", "c.png", "road classes", matching_text="road classes")]
CUED = dict(placement="cued", lexical="bm25", lexical_weight=1.0, heading_weight=0.0, z_threshold=-1.0,
            count_factor=0, empty_penalty=0.0, mention_bonus=0.0)


def _brute(r, threshold, cap, penalty):
    """Best total over every way to give each image one position or none, at most cap[p] per
    position, the k-th image of a position counting k x penalty less (what the solver must find)."""
    n_pos, n_img = r.shape
    best = -np.inf
    for choice in itertools.product(range(-1, n_pos), repeat=n_img):
        per = [[i for i in range(n_img) if choice[i] == p] for p in range(n_pos)]
        if any(len(x) > cap[p] for p, x in enumerate(per)):
            continue
        total = 0.0
        for p, x in enumerate(per):
            vals = sorted((r[p, i] for i in x), reverse=True)
            total += sum(v - k * penalty for k, v in enumerate(vals)) + (cap[p] - len(x)) * threshold
        best = max(best, total)
    return best


def _total(r, threshold, cap, penalty, got):
    return sum(sum(r[p, i] - k * penalty for k, i in enumerate(x)) + (cap[p] - len(x)) * threshold
               for p, x in enumerate(got))


def test_slots_are_one_exact_assignment_each_image_once():
    rng = np.random.default_rng(0)
    for _ in range(30):
        r = rng.normal(size=(3, 4))
        cap = rng.integers(1, 4, size=3)
        for penalty in (0.0, 0.4):
            got = assign_slots(r, 0.2, cap, penalty)
            flat = [i for x in got for i in x]
            assert len(flat) == len(set(flat))                        # each image at most once
            assert all(len(x) <= cap[p] for p, x in enumerate(got))
            assert all(list(x) == sorted(x, key=lambda i: -r[p, i]) for p, x in enumerate(got))  # best first
            assert _total(r, 0.2, cap, penalty, got) == pytest.approx(_brute(r, 0.2, cap, penalty))


def test_a_section_citing_two_figures_gets_both_when_capacity_allows():
    one = place_images("Atlas", SECTIONS, IMAGES, REL, config=ComposeConfig(**CUED))
    assert [p.images for p in one] == [["IMAGE_1"], ["IMAGE_3"], ["IMAGE_2"]]   # the second river figure lands wrong
    assert section_capacity([s.text for s in SECTIONS], 3, "mentions").tolist() == [2, 1, 1]
    for rule in ("fixed", "mentions"):
        two = place_images("Atlas", SECTIONS, IMAGES, REL, config=ComposeConfig(**CUED, capacity=2, capacity_rule=rule))
        assert [p.images for p in two] == [["IMAGE_1", "IMAGE_2"], ["IMAGE_3"], []]   # best first
        assert two[0].image == "IMAGE_1" and two[0].more == ["IMAGE_2"]     # the metric reads the first
    # a second slot must beat "Not Insert" by the slot penalty too
    strict = ComposeConfig(**CUED, capacity=2, slot_penalty=5.0)
    assert [p.images for p in place_images("Atlas", SECTIONS, IMAGES, REL, config=strict)] == \
        [["IMAGE_1"], ["IMAGE_3"], ["IMAGE_2"]]


def test_capacity_one_is_the_old_assignment():
    for name in PLACEMENTS:
        assert PLACEMENTS[name]["capacity"] == 1                     # every preset: one image per position
    rng = np.random.default_rng(1)
    for _ in range(30):
        r = rng.normal(size=(5, 4))
        for cap in (None, 2):
            old = assign_images(r, 0.3, max_inserted=cap)
            assert assign_slots(r, 0.3, 1, max_occupied=cap) == [[] if c is None else [c] for c in old]
            # the slot solver with a second slot that can never pay is the old assignment too
            assert assign_slots(r, 0.3, 2, slot_penalty=1e6, max_occupied=cap) == [[] if c is None else [c] for c in old]
    base = place_images("Atlas", SECTIONS, IMAGES, REL, config=ComposeConfig(**CUED))
    same = place_images("Atlas", SECTIONS, IMAGES, REL, config=ComposeConfig(**CUED, capacity=1, capacity_rule="length"))
    assert base == same and all(p.more == [] for p in base)


def test_count_cap_limits_occupied_positions():
    r = np.array([[2.0, 1.9, 1.8], [1.0, 0.2, 0.1], [0.1, 1.1, 0.2]])
    got = assign_slots(r, 0.0, 3, 0.0, max_occupied=1)
    assert sum(bool(x) for x in got) == 1 and got[0] == [0, 1, 2]     # one position, all its images
    assert assign_slots(r, 0.0, 3, 0.0, max_occupied=0) == [[], [], []]


def test_capacity_from_the_section_text():
    texts = ["See Figure and the figure below, then the diagram.", "No cue here at all, but long " * 6, "", "short"]
    assert figure_mentions(texts[0]) == 3 and figure_mentions(texts[1]) == 0
    assert section_capacity(texts, 2, "mentions").tolist() == [2, 1, 1, 1]
    assert section_capacity(texts, 5, "fixed").tolist() == [5, 5, 5, 5]
    assert section_capacity(texts, 5, "length").tolist() == [1, 5, 1, 1]   # 42 words over the median 9
    assert section_capacity(texts, 3, "length").tolist() == [1, 3, 1, 1]
    assert section_capacity(texts, 1, "mentions").tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="capacity rule"):
        section_capacity(texts, 2, "figures")
    with pytest.raises(ValueError, match="capacity must"):
        section_capacity(texts, 0)
    with pytest.raises(ValueError, match="capacity must"):
        assign_slots(np.ones((2, 2)), 0.0, [1, 0])


def test_references_stay_valid_and_images_of_a_position_follow_each_other():
    doc = Document("atlas", "Atlas", [Section(s.heading, s.level, s.text) for s in SECTIONS],
                   [DocImage(im.id, im.path, im.caption, section=sec) for im, sec in zip(IMAGES, (0, 0, 1))])
    cfg = ComposeConfig(**CUED, capacity=2)
    out = evaluate_figure_positions([doc], cfg, relevance=REL, keep_outputs=True)
    md = out["per_doc"][0]["markdown"]
    refs = [k for _, k in find_references(md)]
    assert sorted(refs) == ["IMAGE_1", "IMAGE_2", "IMAGE_3"] and not invalid_references(md, 3)
    assert out["valid_refs"] == 1.0
    rivers, roads = md.index("## Rivers"), md.index("## Roads")
    # (the evaluation numbers candidates in its own order: find them by caption)
    network, basins, road = (md.index(f"![{c}](") for c in ("river network", "river basins", "road classes"))
    assert rivers < network < basins < roads     # one after another, best first
    assert "## Roads" in md[network:road]
    assert out["figures"] == {"placed": 3, "right": 3, "R": 1.0, "P": 1.0, "F1": 1.0}
    assert out["F1"] == 1.0                                             # the metric reads one image per position
    one = evaluate_figure_positions([doc], ComposeConfig(**CUED), relevance=REL)
    assert one["figures"]["right"] == 2 and one["P"] == pytest.approx(2 / 3)   # IMAGE_2 parked at History
    md = build_markdown("T", SECTIONS[:1], {1: IMAGES[:2]})
    assert md.endswith("![river network](IMAGE_1)\n\n![river basins](IMAGE_2)\n")
