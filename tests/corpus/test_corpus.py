"""Corpus readers on the real shared data (skipped when absent) and on hand-made bad inputs."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.corpus.images import open_image
from mmrag.corpus.items import Corpus
from mmrag.corpus.readers import (
    READERS,
    detect_kind,
    read_coco,
    read_corpus,
    read_flickr8k,
    read_folder,
    read_jsonl,
    read_karpathy,
)
from mmrag.errors import CorpusError, ImageError

# --------------------------------------------------------------------------- shared data


def _data_root() -> Path:
    env = os.environ.get("MMRAG_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


DATA = _data_root()


@pytest.fixture(scope="module")
def flickr_dir() -> Path:
    d = DATA / "flickr8k"
    if not (d / "captions.jsonl").is_file() or not (d / "ann" / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8k not found under {d} (set MMRAG_DATA to the shared data folder)")
    return d


@pytest.fixture(scope="module")
def coco_json() -> Path:
    f = DATA / "coco_sample" / "captions_val2017_sample.json"
    if not f.is_file():
        pytest.skip(f"COCO sample not found at {f} (set MMRAG_DATA to the shared data folder)")
    return f


@pytest.fixture(scope="module")
def flickr_all(flickr_dir) -> Corpus:
    return read_corpus("flickr8k", flickr_dir)


@pytest.mark.parametrize("split,n", [("train", 6000), ("dev", 1000), ("test", 1000), (None, 8091)])
def test_flickr8k_split_sizes(flickr_dir, split, n):
    c = read_corpus("flickr8k", flickr_dir, split=split)
    assert len(c) == n
    assert all(it.split == split for it in c.items) if split else True
    assert all(len(it.captions) == 5 for it in c.items)
    ids = [it.id for it in c.items]
    assert len(set(ids)) == n and ids == sorted(ids)


def test_flickr8k_all_items_are_real_files(flickr_all):
    assert len(flickr_all) == 8091
    assert flickr_all.skipped == []
    # 91 images are in no official split; split=None keeps them with split None
    assert sum(it.split is None for it in flickr_all.items) == 91
    for it in flickr_all.items:
        assert it.id == it.path.name and it.id.endswith(".jpg")
        assert it.path.is_file()
        assert all(c == c.strip() and c for c in it.captions)


def test_flickr8k_reads_fast(flickr_dir):
    t = time.perf_counter()
    read_corpus("auto", flickr_dir)
    assert time.perf_counter() - t < 3.0  # ~0.5 s here: readers never decode images


def test_flickr8k_token_file_matches_captions_jsonl(flickr_dir, flickr_all):
    tok = read_flickr8k(flickr_dir, source="token")
    assert [it.id for it in tok.items] == [it.id for it in flickr_all.items]
    by_id = {it.id: it for it in flickr_all.items}
    for it in tok.items:
        assert it.captions == by_id[it.id].captions
        assert it.split == by_id[it.id].split
        assert it.path == by_id[it.id].path
    # The token file names one image that is not in the image archive (and its "#0" caption
    # under the typo "....jpg.1"): reported, not fatal.
    assert [(Path(s.source).name, s.reason) for s in tok.skipped] == [
        ("2258277193_586949ec62.jpg", "file not found")
    ]
    # Same via the token file path itself, and with a split.
    test_tok = read_corpus("auto", flickr_dir / "ann" / "Flickr8k.token.txt", split="test")
    assert len(test_tok) == 1000


def test_flickr8k_limit_and_detection(flickr_dir, flickr_all):
    assert detect_kind(flickr_dir) == "flickr8k"
    c = read_corpus("auto", flickr_dir, limit=10)
    assert [it.id for it in c.items] == [it.id for it in flickr_all.items[:10]]
    with pytest.raises(CorpusError, match="split"):
        read_corpus("flickr8k", flickr_dir, split="validation")
    assert len(read_corpus("flickr8k", flickr_dir, split="val")) == 1000  # alias of dev


def test_coco_sample(coco_json):
    data = json.loads(coco_json.read_text())
    for target in (coco_json, coco_json.parent):
        c = read_corpus("auto", target)
        assert len(c) == 100 and c.skipped == []
        assert all(len(it.captions) >= 5 for it in c.items)
        assert all(it.path.is_file() for it in c.items)
        assert len({it.id for it in c.items}) == 100
    img = data["images"][0]
    item = next(it for it in c.items if it.id == img["file_name"])
    assert item.metadata["coco_id"] == img["id"]
    assert item.metadata["license"] == img["license"]
    assert (item.metadata["original_width"], item.metadata["original_height"]) == (
        img["width"],
        img["height"],
    )
    expected = [a["caption"].strip() for a in data["annotations"] if a["image_id"] == img["id"]]
    assert item.captions == expected
    assert detect_kind(coco_json) == "coco"
    with pytest.raises(CorpusError, match="karpathy"):
        read_coco(coco_json, split="train")


# --------------------------------------------------------------------------- hand-made inputs


def _jpeg_bytes(size=(32, 24), color=(200, 30, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = color[0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    good = _jpeg_bytes()
    _write(root / "b.jpg", good)
    _write(root / "b.txt", "  a red square  \n\n second caption\n   \n")
    _write(root / "a" / "nested" / "deep.PNG", _png_bytes())
    _write(root / "a" / "x.jpeg", good)
    _write(root / "corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    _write(root / "truncated.jpg", good[: len(good) // 2])
    _write(root / "text.jpg", "this is not an image\n")
    _write(root / "empty.jpg", b"")
    _write(root / "latin.jpg", good)
    _write(root / "latin.txt", "caf\xe9 au lait\n".encode("latin-1"))
    _write(root / "notes.md", "not an image, ignored")
    _write(root / ".hidden.jpg", good)
    _write(root / ".git" / "inside.jpg", good)
    _write(root / "sub" / ".cache" / "thumb.jpg", good)
    return root


def _png_bytes(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 128, 255)).save(buf, "PNG")
    return buf.getvalue()


def test_folder_reader_policies(messy_folder):
    c = read_folder(messy_folder)
    ids = [it.id for it in c.items]
    assert ids == [
        "a/nested/deep.PNG",
        "a/x.jpeg",
        "b.jpg",
        "corrupt.jpg",
        "latin.jpg",
        "text.jpg",
        "truncated.jpg",
    ]
    by_id = {it.id: it for it in c.items}
    assert by_id["b.jpg"].captions == ["a red square", "second caption"]
    assert by_id["a/x.jpeg"].captions == []
    # Bad sidecar: image kept, text decoded with replacement, and recorded as a warning (the
    # image is not skipped, so it is not counted as skipped).
    assert by_id["latin.jpg"].captions == ["caf\ufffd au lait"]
    warned = {Path(s.source).name: s.reason for s in c.warnings}
    assert "not valid UTF-8" in warned["latin.txt"] and "image kept" in warned["latin.txt"]
    assert set(warned) == {"latin.txt"}
    reasons = {Path(s.source).name: s.reason for s in c.skipped}
    assert reasons == {"empty.jpg": "empty file (0 bytes)"}
    assert c.root == messy_folder and c.name == "photos"
    assert detect_kind(messy_folder) == "folder"
    assert [it.id for it in read_corpus("auto", messy_folder, limit=2).items] == ids[:2]


def test_bad_images_are_kept_by_readers_and_refused_by_open_image(messy_folder):
    c = read_folder(messy_folder)
    by_id = {it.id: it for it in c.items}
    assert open_image(by_id["b.jpg"].path).size == (32, 24)
    assert open_image(by_id["a/nested/deep.PNG"].path).mode == "RGB"
    for bad, why in [("corrupt.jpg", "corrupt|not an image"), ("truncated.jpg", "truncated"),
                     ("text.jpg", "not an image")]:
        with pytest.raises(ImageError, match=why):
            open_image(by_id[bad].path)
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file \(0 bytes\)"):  # as the folder reader says it
        open_image(messy_folder / "empty.jpg")
    with pytest.raises(ImageError, match="file not found"):
        open_image(messy_folder / "nope.jpg")


def test_folder_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus("folder", tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no images found in .*looked recursively"):
        read_corpus("auto", empty)
    only_hidden = tmp_path / "hidden"
    _write(only_hidden / ".a.jpg", _jpeg_bytes())
    _write(only_hidden / "readme.txt", "hi")
    with pytest.raises(CorpusError, match="no images found"):
        read_folder(only_hidden)
    with pytest.raises(CorpusError, match="no splits"):
        read_folder(only_hidden, split="train")
    with pytest.raises(CorpusError, match="limit"):
        read_corpus("auto", only_hidden, limit=0)
    with pytest.raises(CorpusError, match="unknown corpus kind 'nope'"):
        read_corpus("nope", tmp_path)


def test_jsonl_manifest(tmp_path):
    _write(tmp_path / "imgs" / "a.jpg", _jpeg_bytes())
    _write(tmp_path / "imgs" / "b.jpg", _jpeg_bytes(seed=1))
    _write(tmp_path / "imgs" / "c.jpg", _jpeg_bytes(seed=2))
    lines = [
        json.dumps({"image": "imgs/b.jpg", "caption": "  one caption ", "split": "test",
                    "photographer": "ann"}),
        "{not json",
        json.dumps({"image": "imgs/a.jpg", "captions": ["first", "", "  second "], "id": "A",
                    "split": "train"}),
        "",
        json.dumps({"captions": ["no image"]}),
        json.dumps({"image": "imgs/missing.jpg", "captions": ["x"], "split": "train"}),
        json.dumps({"image": "imgs/c.jpg"}),
        json.dumps(["a", "list"]),
    ]
    manifest = _write(tmp_path / "manifest.jsonl", "\n".join(lines) + "\n")
    c = read_corpus("auto", manifest)
    assert [(it.id, it.captions, it.split) for it in c.items] == [
        ("A", ["first", "second"], "train"),
        ("imgs/b.jpg", ["one caption"], "test"),
        ("imgs/c.jpg", [], None),
    ]
    assert c.items[1].metadata == {"photographer": "ann"}
    reasons = [s.reason for s in c.skipped]
    assert any(r.startswith("line 2: not valid JSON") for r in reasons)
    assert "line 5: no 'image' path" in reasons
    assert "line 8: not a JSON object" in reasons
    assert ("file not found" in reasons) and any(
        s.source.endswith("missing.jpg") for s in c.skipped
    )
    assert [it.id for it in read_jsonl(manifest, split="train").items] == ["A"]
    with pytest.raises(CorpusError, match="splits present: test, train"):
        read_jsonl(manifest, split="dev")


def test_jsonl_nan_metadata_is_a_skipped_line(tmp_path, effnet_minilm):
    """NaN/Infinity (Python's JSON extension) in a manifest row: that line is skipped with its
    reason, the rest is indexed; before, the row was read and the run stopped with a traceback
    when the store refused the metadata as JSON."""
    from mmrag.embedding import IndexConfig, build_index

    _write(tmp_path / "a.jpg", _jpeg_bytes())
    _write(tmp_path / "b.jpg", _jpeg_bytes(seed=1))
    manifest = _write(tmp_path / "m.jsonl", '{"image": "a.jpg", "score": NaN}\n'
                                            '{"image": "b.jpg", "score": 0.5, "w": -Infinity}\n'
                                            '{"image": "b.jpg", "id": "ok", "score": 0.5}\n')
    c = read_corpus("jsonl", manifest)
    assert [it.id for it in c.items] == ["ok"]
    assert [s.reason for s in c.skipped] == ["line 1: not valid JSON (NaN is not a JSON value)",
                                             "line 2: not valid JSON (-Infinity is not a JSON value)"]
    rep = build_index(c, tmp_path / "idx", effnet_minilm, IndexConfig(progress=False))
    assert (rep.added, len(rep.skipped)) == (1, 2)


def test_jsonl_encoding(tmp_path):
    _write(tmp_path / "a.jpg", _jpeg_bytes())
    good = json.dumps({"image": "a.jpg", "captions": ["é"]}, ensure_ascii=False)
    bom = _write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + good.encode("utf-8") + b"\n")
    assert read_jsonl(bom).items[0].captions == ["é"]
    bad_line = '{"image": "a.jpg", "caption": "caf\xe9"}\n'.encode("latin-1")
    latin = _write(tmp_path / "latin.jsonl", (good + "\n").encode("utf-8") + bad_line)
    with pytest.raises(CorpusError, match=r"latin.jsonl: not valid UTF-8 at byte \d+ \(line 2\)"):
        read_jsonl(latin)
    only_bad = _write(tmp_path / "bad.jsonl", "nope\n{}\n")
    with pytest.raises(CorpusError, match="no images found in .*bad.jsonl.*2 entries skipped"):
        read_jsonl(only_bad)


def _karpathy_file(tmp_path: Path) -> Path:
    images = []
    for i, sp in enumerate(["train", "val", "test", "restval", "train"]):
        rel = f"val2014/img{i}.jpg"
        _write(tmp_path / rel, _jpeg_bytes(seed=i))
        images.append({
            "filepath": "val2014", "filename": f"img{i}.jpg", "split": sp, "cocoid": 100 + i,
            "sentences": [{"raw": f" caption {i} a ", "tokens": ["caption"]},
                          {"tokens": ["from", "tokens"]}],
        })
    images.append({"filepath": "val2014", "filename": "gone.jpg", "split": "test",
                   "sentences": [{"raw": "x"}]})
    return _write(tmp_path / "dataset_coco.json", json.dumps({"images": images, "dataset": "coco"}))


def test_karpathy_splits(tmp_path):
    f = _karpathy_file(tmp_path)
    assert detect_kind(f) == "karpathy"
    c = read_corpus("auto", f)
    assert [it.id for it in c.items] == [f"val2014/img{i}.jpg" for i in range(5)]
    assert c.items[0].captions == ["caption 0 a", "from tokens"]
    assert c.items[0].metadata["cocoid"] == 100
    assert [s.reason for s in c.skipped] == ["file not found"]
    assert [it.id for it in read_karpathy(f, split="train").items] == [
        "val2014/img0.jpg", "val2014/img4.jpg"
    ]
    assert [it.id for it in read_karpathy(f, split="dev").items] == ["val2014/img1.jpg"]
    assert [it.split for it in read_karpathy(f).items] == ["train", "val", "test", "restval", "train"]
    # restval joins train only when asked
    with_rest = read_corpus("karpathy", f, split="train", restval_as_train=True)
    assert [it.id for it in with_rest.items] == [
        "val2014/img0.jpg", "val2014/img3.jpg", "val2014/img4.jpg"
    ]
    assert with_rest.items[1].split == "train"
    assert with_rest.items[1].metadata["karpathy_split"] == "restval"
    with pytest.raises(CorpusError, match="unknown split"):
        read_karpathy(f, split="training")


def test_coco_handmade_layout(tmp_path):
    data = {
        "licenses": [{"id": 1, "name": "CC BY", "url": "http://x"}],
        "images": [
            {"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480, "license": 1},
            {"id": 8, "file_name": "000008.jpg", "width": 10, "height": 10},
            {"id": 9, "file_name": "000009.jpg"},
        ],
        "annotations": [
            {"image_id": 7, "id": 1, "caption": "second in file "},
            {"image_id": 7, "id": 0, "caption": "  "},
            {"image_id": 9, "id": 2, "caption": "nine"},
            {"image_id": 42, "id": 3, "caption": "orphan"},
        ],
    }
    ann = _write(tmp_path / "annotations" / "captions_val2017.json", json.dumps(data))
    # images in a sibling folder: default lookup fails, image_dir= fixes it
    _write(tmp_path / "val2017" / "000007.jpg", _jpeg_bytes())
    _write(tmp_path / "val2017" / "000009.jpg", _jpeg_bytes(seed=1))
    with pytest.raises(CorpusError, match="image_dir"):
        read_coco(ann)
    c = read_corpus("coco", ann, image_dir=tmp_path / "val2017")
    assert [it.id for it in c.items] == ["000007.jpg", "000009.jpg"]
    assert c.items[0].captions == ["second in file"]
    assert c.items[0].metadata["license_name"] == "CC BY"
    assert c.items[0].metadata["original_width"] == 640
    reasons = sorted(s.reason for s in c.skipped)
    assert reasons == ["file not found", "unknown image_id 42"]
    # a JSON next to its val2017/ folder finds it without help
    ann2 = _write(tmp_path / "captions_val2017.json", json.dumps(data))
    assert len(read_corpus("auto", ann2)) == 2
    assert detect_kind(tmp_path) == "coco"  # a folder with one captions_*.json


def test_flickr8k_token_layout_handmade(tmp_path):
    root = tmp_path / "Flickr8k"
    names = ["100_aa.jpg", "200_bb.jpg", "300_cc.jpg", "400_dd.jpg"]
    for i, n in enumerate(names):
        _write(root / "Flicker8k_Dataset" / n, _jpeg_bytes(seed=i))
    token = "\n".join(
        [f"200_bb.jpg#{k}\tb caption {k}" for k in (1, 0)]
        + ["100_aa.jpg.1#0\ttypo name caption", "100_aa.jpg#1\ta second ", "garbage line",
           "300_cc.jpg#0\tc", "400_dd.jpg#0\td", "999_zz.jpg#0\tmissing image"]
    )
    _write(root / "ann" / "Flickr8k.token.txt", token + "\n")
    _write(root / "ann" / "Flickr_8k.trainImages.txt", "100_aa.jpg\n200_bb.jpg\n")
    _write(root / "ann" / "Flickr_8k.devImages.txt", "300_cc.jpg\n")
    _write(root / "ann" / "Flickr_8k.testImages.txt", "")
    assert detect_kind(root) == "flickr8k"
    c = read_corpus("auto", root)
    assert [(it.id, it.split) for it in c.items] == [
        ("100_aa.jpg", "train"), ("200_bb.jpg", "train"), ("300_cc.jpg", "dev"), ("400_dd.jpg", None)
    ]
    assert c.items[0].captions == ["typo name caption", "a second"]
    assert c.items[1].captions == ["b caption 0", "b caption 1"]  # ordered by #k
    reasons = sorted(s.reason for s in c.skipped)
    assert reasons[0] == "file not found" and "line 5" in reasons[1]
    assert len(read_flickr8k(root, split="train")) == 2
    with pytest.raises(CorpusError, match="split 'test' matched nothing"):
        read_flickr8k(root, split="test")
    with pytest.raises(CorpusError, match="no Flickr8k captions"):
        read_flickr8k(root, source="jsonl")


def test_manifest_errors(tmp_path):
    bad_json = _write(tmp_path / "x.json", '{"images": [}')
    with pytest.raises(CorpusError, match=r"x.json: not valid JSON \(line 1"):
        read_corpus("auto", bad_json)
    other = _write(tmp_path / "y.json", '{"foo": 1}')
    with pytest.raises(CorpusError, match="unrecognised JSON layout"):
        read_corpus("auto", other)
    latin = _write(tmp_path / "dataset_x.json", '{"images": [{"filename": "\xe9"}]}'.encode("latin-1"))
    with pytest.raises(CorpusError, match="not valid UTF-8 at byte 26"):
        read_karpathy(latin)
    with pytest.raises(CorpusError, match="single image"):
        read_corpus("auto", _write(tmp_path / "one.jpg", _jpeg_bytes()))


def test_new_reader_is_one_entry(tmp_path):
    def read_listing(path, split=None, limit=None):
        base = Path(path).parent
        from mmrag.corpus.items import CorpusItem

        items = [CorpusItem(id=n, path=base / n) for n in Path(path).read_text().split()]
        return Corpus("listing", base, items[:limit])

    _write(tmp_path / "a.jpg", _jpeg_bytes())
    READERS["listing"] = read_listing
    try:
        listing = _write(tmp_path / "l.txt", "a.jpg")
        assert [it.id for it in read_corpus("listing", listing).items] == ["a.jpg"]
    finally:
        del READERS["listing"]
    assert {"folder", "coco", "karpathy", "flickr8k", "jsonl"} <= set(READERS)


# --------------------------------------------------------------------------- open_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int) -> bytes:
    """A ``side`` x ``side`` 1-bit black PNG, a few tens of KB on disk, built without
    ever holding the pixels in memory."""
    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)] + [comp.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def test_decompression_bomb_is_refused_cheaply(tmp_path):
    bomb = _write(tmp_path / "bomb.png", _bomb_png(20000))
    assert bomb.stat().st_size < 200_000
    # a reader keeps it (it never decodes)...
    assert [it.id for it in read_folder(tmp_path).items] == ["bomb.png"]
    before = _peak_rss_mb()
    with pytest.raises(ImageError, match="too large|decompression bomb"):
        open_image(bomb)
    with pytest.raises(ImageError, match="too large|decompression bomb"):
        open_image(bomb.read_bytes())
    # ...and open_image refuses it from the header: 400 Mpx would need >= 400 MB decoded
    assert _peak_rss_mb() - before < 100
    # our limit is the one applied (PIL alone would warn only above ~89 Mpx)
    with pytest.raises(ImageError, match=r"too large \(10000x10000 > 64000000 pixels\)"):
        open_image(_bomb_png(10000))
    small = _bomb_png(3000)
    with pytest.raises(ImageError, match=r"too large \(3000x3000 > 1000000"):
        open_image(small, max_pixels=1_000_000)
    assert open_image(small).size == (3000, 3000)


def test_open_image_exif_orientation_and_depth():
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (60, 30), (0, 0, 255)).save(buf, "JPEG", exif=ex)
    assert open_image(buf.getvalue()).size == (30, 60)
    # 16-bit greys are scaled to 8 bits, not clipped to white
    a = np.full((8, 8), 32768, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    assert np.asarray(open_image(buf.getvalue()))[0, 0].tolist() == [128, 128, 128]
    # fully transparent pixels come out white, not the hidden colour underneath
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buf, "PNG")
    assert open_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------- sample photos


def test_sample_photos_corpus_builds_offline(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image not installed (pip install scikit-image)")
    from mmrag.corpus.samples import sample_captions, sample_photos_corpus

    c = sample_photos_corpus(tmp_path / "samples")
    assert 10 <= len(c) <= 14 and c.skipped == []
    assert {it.id for it in c.items} == {f"{n}.jpg" for n in sample_captions()}
    for it in c.items:
        assert 2 <= len(it.captions) <= 3
        img = open_image(it.path)
        assert img.mode == "RGB" and max(img.size) <= 640
    # the folder is also a folder corpus with the same captions (via sidecars)
    again = read_corpus("auto", tmp_path / "samples")
    assert [(it.id, it.captions) for it in again.items] == [(it.id, it.captions) for it in c.items]
    # a second call reuses the files
    assert len(sample_photos_corpus(tmp_path / "samples")) == len(c)


def test_sample_photos_without_scikit_image(tmp_path, monkeypatch):
    from mmrag.corpus.samples import sample_photos_corpus

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(CorpusError, match="pip install scikit-image"):
        sample_photos_corpus(tmp_path)


def test_one_cache_root(tmp_path, monkeypatch):
    """Every cache follows $MMRAG_CACHE (mmrag.paths.cache_dir): the samples, the caption
    datastore, the embedding caches; no module spells its own ~/.cache."""
    from mmrag.corpus.samples import default_samples_dir
    from mmrag.retrieval.cache import embeddings_dir
    from mmrag.retrieval.datastore import _default_cache_dir

    monkeypatch.setenv("MMRAG_CACHE", str(tmp_path / "cache"))
    for d in (default_samples_dir(), _default_cache_dir(), embeddings_dir()):
        assert Path(d).is_relative_to(tmp_path / "cache"), d
    pkg = Path(__file__).resolve().parents[1] / "mmrag"
    spelled = re.compile(r"""[~/"']\.cache\b|XDG_CACHE_HOME""")
    own = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
           if p.name != "paths.py" and spelled.search(p.read_text(encoding="utf-8"))]
    assert own == [], f"modules choosing their own cache folder: {own}"


def _need_cairosvg():
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: cairocffi found no libcairo
        pytest.skip(f"cairosvg and libcairo (Debian libcairo2) are needed to rasterise SVG: {e}")


def test_svg_figures_are_rasterised_at_a_bounded_size(data_dir, tmp_path):
    """#16 item 13: d2l's SVG figures were skipped as 'not an image'."""
    _need_cairosvg()
    from mmrag.corpus.images import SVG_MAX_SIDE, SVG_MIN_SIDE

    svg = data_dir / "d2l" / "img" / "qkv.svg"
    if not svg.exists():
        pytest.skip("d2l images not in the shared data")
    img = open_image(svg)
    a = np.asarray(img)
    assert img.mode == "RGB" and SVG_MIN_SIDE <= max(img.size) <= SVG_MAX_SIDE
    assert a.std() > 10 and (a > 250).mean() > 0.3  # a drawing on white, not a blank or black raster
    assert open_image(svg.read_bytes()).size == img.size  # bytes (uploads) are sniffed as SVG too
    # the declared size is the bound's input, not the raster's: huge and tiny SVGs both fit
    ns = 'xmlns="http://www.w3.org/2000/svg"'
    for w, h in ((1_000_000, 500_000), (8, 4)):
        p = tmp_path / f"s{w}.svg"
        p.write_text(f'<svg {ns} width="{w}" height="{h}"><rect width="{w}" height="{h / 2}" fill="red"/></svg>')
        big = open_image(p)
        assert max(big.size) in (SVG_MAX_SIDE, SVG_MIN_SIDE) and big.size[0] == 2 * big.size[1]
    # malformed, entity-expanding, size-less or external-file SVGs: a clear ImageError, no crash
    bad = {
        "trunc.svg": (f'<svg {ns} width="10" height="10"><rect', "corrupt or unsupported SVG"),
        "ent.svg": ('<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaa">]>'
                    f'<svg {ns} width="10" height="10"><text>&a;</text></svg>', "corrupt or unsupported SVG"),
        "nosize.svg": (f"<svg {ns}></svg>", "no usable width/height"),
        "thin.svg": (f'<svg {ns} width="1e9" height="1"></svg>', "aspect ratio"),
    }
    for fn, (text, why) in bad.items():
        (tmp_path / fn).write_text(text)
        with pytest.raises(ImageError, match=re.escape(why)) as e:
            open_image(tmp_path / fn)
        assert str(e.value).startswith(str(tmp_path / fn)) and "\n" not in str(e.value)
    # no file outside the SVG is read: an <image> pointing at a real photo draws nothing
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 20), (0, 0, 0)).save(photo)
    (tmp_path / "ext.svg").write_text(f'<svg {ns} xmlns:xlink="http://www.w3.org/1999/xlink" width="20" height="20">'
                                      f'<image xlink:href="{photo.as_uri()}" width="20" height="20"/></svg>')
    assert np.asarray(open_image(tmp_path / "ext.svg")).min() == 255
