"""The ``clip`` encoder (ONNX Runtime) against its references.

* embeddings: a small randomly initialised ``transformers.CLIPModel`` is exported in both layouts;
  the ONNX encoder must give the torch model's ``get_image_features`` / ``get_text_features``
  (L2-normalised) to 1e-4 on real photos and varied texts;
* tokenizer: ids equal to OpenAI's (open_clip's ``SimpleTokenizer`` when installed) and to
  ``transformers.CLIPTokenizer`` built from the same vocabulary;
* preprocessing: equal to ``transformers.CLIPImageProcessor`` (PIL backend);
* a hub id offline, a missing directory, a directory without towers: clear ModelUnavailableError.
"""

from __future__ import annotations

import html
import importlib.util
import io
from pathlib import Path

import ftfy
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnx")  # torch.onnx.export needs it

from clip_helpers import tiny_clip_model  # noqa: E402

from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.encoders.clip_onnx import ClipOnnxEncoder, export_clip_to_onnx, write_openai_vocab  # noqa: E402
from mmrag.encoders.clip_tokenizer import ClipTokenizer, basic_clean  # noqa: E402
from mmrag.encoders.clip_transform import ClipTransform  # noqa: E402
from mmrag.errors import ImageError, ModelUnavailableError  # noqa: E402

IMAGE_SIZE = 64
EMBED_ATOL = 1e-4
SOT, EOT = 49406, 49407

LONG_TEXT = "the quick brown fox " * 40  # far beyond 77 tokens
TEXTS = [
    "a photo of a cat.",
    "A dog running on the beach!!! ... ???",
    "café naïve résumé Zürich",
    "東京タワーの写真",
    "🐶🐱 emoji 👍🏽",
    "3.14159 and 1,000,000 km in 2024",
    "Tom &amp; Jerry &lt;b&gt; &#39;quoted&#39;",
    "  lots   of \n\t whitespace  ",
    "",
    "“curly quotes” — and a dash",
    "it's they're we've I'm you'll he'd",
    LONG_TEXT,
    "<b> Tom &amp;amp; Jerry</b>",
]
# Strings a Hugging Face tokenizer sees differently because it does not run ftfy / html.unescape.
FTFY_OR_HTML = {TEXTS[6], TEXTS[9], TEXTS[12]}


# ---------------------------------------------------------------------------------------------
# Fixtures


def _tiny_clip(eos_token_id: int | None = None, seed: int = 0):
    return tiny_clip_model(eos_token_id, seed, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def clip_model():
    return _tiny_clip()


@pytest.fixture(scope="module")
def exported(clip_model, tmp_path_factory):
    dirs = {}
    for layout in ("hf", "open_clip"):
        d = tmp_path_factory.mktemp(f"clip_{layout}")
        export_clip_to_onnx(clip_model, d, layout=layout)
        dirs[layout] = d
    return dirs


@pytest.fixture(scope="module")
def photos():
    skdata = pytest.importorskip("skimage.data")
    arrays = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.camera()]
    return [Image.fromarray(a).convert("RGB") for a in arrays]


def _hf_image_processor(size: int):
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _ref_image(model, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(pixels))
    out = getattr(out, "pooler_output", out).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _ref_text(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(ids))
    out = getattr(out, "pooler_output", out).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers.CLIPTokenizer over OpenAI's vocabulary (vocab.json + merges.txt from the gz)."""
    d = tmp_path_factory.mktemp("openai_vocab")
    write_openai_vocab(d)
    return transformers.CLIPTokenizer.from_pretrained(str(d)), d


def _open_clip_tokenizer():
    """open_clip's SimpleTokenizer, loaded from its file without importing open_clip (torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    if not path.is_file():
        return None
    mspec = importlib.util.spec_from_file_location("_open_clip_tokenizer_ref", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.SimpleTokenizer()


# ---------------------------------------------------------------------------------------------
# Embeddings against torch


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_image_embeddings_match_torch(layout, clip_model, exported, photos, tmp_path):
    enc = create_encoder("clip", model=str(exported[layout]))
    assert isinstance(enc, ClipOnnxEncoder) and enc.layout == layout
    assert enc.name == f"clip:{exported[layout]}" and enc.dim == 32
    # All three input kinds: PIL, bytes, path.
    png = io.BytesIO()
    photos[1].save(png, format="PNG")
    path = tmp_path / "p.png"
    photos[2].save(path)
    inputs = [photos[0], png.getvalue(), str(path), photos[3], photos[4]]
    got = enc.embed_images(inputs, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    ref = _ref_image(clip_model, enc.preprocess(photos))
    assert np.abs(got - ref).max() < EMBED_ATOL
    if layout == "hf":  # and the HF layout's pixels are CLIPImageProcessor's, so the chain is exact
        pixels = _hf_image_processor(IMAGE_SIZE)(images=photos, return_tensors="np")["pixel_values"]
        assert np.abs(got - _ref_image(clip_model, pixels.astype(np.float32))).max() < EMBED_ATOL
    # Different photos really give different embeddings (the check is not vacuous).
    assert np.abs(got[0] - got[1]).max() > 10 * EMBED_ATOL


def test_image_embeddings_match_torch_flickr8k(clip_model, exported, flickr8k_dir):
    # flickr8k_dir (conftest.py) skips when ../shared/data (relative to the repo root) is absent.
    files = sorted((flickr8k_dir / "images").glob("*.jpg"))[:32]
    if not files:
        pytest.skip(f"no .jpg files in {flickr8k_dir / 'images'}")
    for layout in ("hf", "open_clip"):
        enc = ClipOnnxEncoder(str(exported[layout]))
        got = enc.embed_images([str(f) for f in files], batch_size=16)
        ref = _ref_image(clip_model, enc.preprocess([str(f) for f in files]))
        assert np.abs(got - ref).max() < EMBED_ATOL, layout


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_text_embeddings_match_torch(layout, clip_model, exported):
    enc = create_encoder("clip", model=str(exported[layout]))
    got = enc.embed_texts(TEXTS, batch_size=5)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    ref = _ref_text(clip_model, enc.tokenizer(TEXTS))
    assert np.abs(got - ref).max() < EMBED_ATOL
    assert np.abs(got[0] - got[1]).max() > 10 * EMBED_ATOL
    assert enc.embed_texts([]).shape == (0, 32) and enc.embed_images([]).shape == (0, 32)


def test_text_export_with_legacy_eos_pooling(tmp_path):
    """Old configs (eos_token_id == 2) pool by argmax of the ids; the export must follow the model."""
    model = _tiny_clip(eos_token_id=2, seed=1)
    export_clip_to_onnx(model, tmp_path, layout="hf")
    enc = ClipOnnxEncoder(str(tmp_path))
    assert "attention_mask" in [i.name for i in enc._text.get_inputs()]
    got = enc.embed_texts(TEXTS)
    assert np.abs(got - _ref_text(model, enc.tokenizer(TEXTS))).max() < EMBED_ATOL


def test_bad_image_raises_image_error(exported):
    enc = ClipOnnxEncoder(str(exported["hf"]))
    with pytest.raises(ImageError):
        enc.embed_images([b"not an image"])


# ---------------------------------------------------------------------------------------------
# Tokenizer against references


def test_tokenizer_matches_hf_clip_tokenizer(hf_tokenizer):
    ht, vocab_dir = hf_tokenizer
    ours = ClipTokenizer.from_bpe_gz()
    texts = TEXTS + ["<|endoftext|> inside a text", "ＦＵＬＬＷＩＤＴＨ", "e\u0301 combining accent"]
    got = ours(texts)
    assert got.shape == (len(texts), 77) and got.dtype == np.int64
    for text, row in zip(texts, got):
        # transformers' CLIPTokenizer has no ftfy/html step: give it text cleaned as OpenAI's
        # simple_tokenizer.py cleans (written out here, independently of the module under test).
        ref_in = text
        if text in FTFY_OR_HTML or text.startswith("ＦＵＬＬ"):
            ref_in = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
        ref = ht(ref_in, max_length=77, truncation=True)["input_ids"]
        assert list(row[: len(ref)]) == ref, text
        assert not row[len(ref) :].any(), text  # zero padding (HF pads with EOT instead)
    # Without that help the HF tokenizer really differs on those strings (so the split is needed).
    assert ht(TEXTS[6])["input_ids"] != list(ours([TEXTS[6]])[0][: len(ht(TEXTS[6])["input_ids"])])

    empty = got[texts.index("")]
    assert list(empty[:2]) == [SOT, EOT] and not empty[2:].any()
    long = got[texts.index(LONG_TEXT)]
    assert long[0] == SOT and long[-1] == EOT and (long[1:-1] != EOT).all() and long.all()

    # The same ids from a Hugging Face directory: vocab.json + merges.txt, and tokenizer.json alone.
    assert (ClipTokenizer.from_hf_dir(vocab_dir)(texts) == got).all()
    tj_dir = vocab_dir.parent / "tokenizer_json_only"
    ht.save_pretrained(str(tj_dir))
    for name in ("vocab.json", "merges.txt"):
        (tj_dir / name).unlink(missing_ok=True)
    assert (tj_dir / "tokenizer.json").is_file()
    assert (ClipTokenizer.from_hf_dir(tj_dir)(texts) == got).all()


def test_tokenizer_matches_openai_simple_tokenizer():
    ref = _open_clip_tokenizer()
    if ref is None:
        pytest.skip("open_clip_torch not installed (pip install --no-deps open_clip_torch)")
    got = ClipTokenizer.from_bpe_gz()(TEXTS)
    expected = ref(TEXTS).numpy()
    assert (got == expected).all()


def test_tokenizer_cleaning_steps():
    tok = ClipTokenizer.from_bpe_gz()
    # html unescape (twice; ftfy leaves entities alone in text that looks like HTML), whitespace
    # collapse and lower-casing each change nothing in the ids.
    assert (tok(["<b> Tom &amp;amp; Jerry"]) == tok(["<b> tom & jerry"])).all()
    assert basic_clean("<b> Tom &amp;amp;amp; Jerry") == "<b> Tom &amp; Jerry"  # exactly twice
    assert (tok(["  A   PHOTO\n\tOF  a CAT "]) == tok(["a photo of a cat"])).all()
    assert not (tok(["a photo of a cat"]) == tok(["a photo of a dog"])).all()


# ---------------------------------------------------------------------------------------------
# Preprocessing against transformers.CLIPImageProcessor


def test_preprocessing_matches_clip_image_processor(photos):
    # Extra sizes exercise odd crop offsets and both orientations.
    rng = np.random.default_rng(0)
    extra = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(301, 257), (97, 400), (224, 224), (225, 231)]]
    images = photos + extra
    for size in (IMAGE_SIZE, 224):
        ours = ClipTransform(resize=size, crop=(size, size)).batch(images)
        ref = _hf_image_processor(size)(images=images, return_tensors="np")["pixel_values"]
        assert ours.shape == ref.shape == (len(images), 3, size, size) and ours.dtype == np.float32
        # Same PIL bicubic resize, same integer crop, same float64 rescale and float32 normalise:
        # the arrays are equal to float32 rounding.
        assert np.abs(ours - ref).max() <= 1e-6


def test_preprocessing_reads_model_dir(exported):
    t_hf = ClipTransform.from_model_dir(exported["hf"])
    t_oc = ClipTransform.from_model_dir(exported["open_clip"], flavour="torchvision")
    assert t_hf.output_hw == t_oc.output_hw == (IMAGE_SIZE, IMAGE_SIZE)
    assert ClipTransform.from_model_dir(None).output_hw == (224, 224)
    cfg = {"size": {"shortest_edge": 336}, "crop_size": 336, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    t = ClipTransform.from_hf_config(cfg)
    assert t.output_hw == (336, 336) and t.mean == (0.5, 0.5, 0.5)


def test_torchvision_flavour_crop_rounding(photos):
    """open_clip layout: torchvision's CenterCrop rounds the offset, transformers floors it."""
    tv = ClipTransform(resize=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE), flavour="torchvision")
    hf = ClipTransform(resize=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE))
    assert tv._crop_offsets(67, 64) == (2, 0) and hf._crop_offsets(67, 64) == (1, 0)  # round(1.5) = 2
    assert tv._crop_offsets(69, 64) == (2, 0) and hf._crop_offsets(69, 64) == (2, 0)  # round(2.5) = 2
    even = Image.fromarray(np.asarray(photos[0])[:, :400])  # 512x400 -> 81x64: offsets 8 and 8
    assert np.abs(tv(even) - hf(even)).max() <= 1e-6


def test_extreme_aspect_ratio_is_bounded_and_close():
    rng = np.random.default_rng(1)
    strip = Image.fromarray(rng.integers(0, 256, (20, 4000, 3), dtype=np.uint8))
    t = ClipTransform(resize=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE))
    fast = t(strip)  # resamples only the crop window (12800 x 64 would be 200x the crop)
    full_img = strip.resize(t._resized_size(*strip.size), resample=t.resample)
    left, top = t._crop_offsets(*full_img.size)
    full = ClipTransform(resize=None, crop=(IMAGE_SIZE, IMAGE_SIZE))(full_img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)))
    # Equal up to a one-level uint8 rounding difference of the filter positions (1/255/std).
    assert np.abs(fast - full).max() <= 1.01 / 255 / min(t.std)


# ---------------------------------------------------------------------------------------------
# Errors


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.raises(ModelUnavailableError) as e:
        create_encoder("clip", model="mmrag-test/no-such-clip-model")
    msg = str(e.value)
    assert "mmrag-test/no-such-clip-model" in msg and "--encoder-model DIR" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_or_invalid_directory_gives_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        create_encoder("clip", model=str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="no CLIP ONNX towers"):
        create_encoder("clip", model=str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "visual.onnx").write_bytes(b"not onnx")
    (bad / "textual.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailableError, match="cannot load ONNX graph"):
        create_encoder("clip", model=str(bad))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelUnavailableError, match="not a directory"):
        create_encoder("clip", model=str(tmp_path / "f.txt"))


def test_clip_index_and_search_round_trip(exported, sample_corpus, tmp_path):
    """An index built with the clip encoder records how to rebuild it; search reopens it."""
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.retrieval import Searcher

    enc = create_encoder("clip", model=str(exported["hf"]))
    rep = build_index(sample_corpus, tmp_path / "idx", enc, IndexConfig(progress=False))
    assert rep.total_images == len(sample_corpus)
    s = Searcher(tmp_path / "idx")  # rebuilds the encoder from the manifest
    assert s.manifest.encoder == "clip"
    item = sample_corpus.items[0]
    hit = s.search(image=item.path, k=1)[0]
    assert hit.id == item.id and hit.score > 0.999
    assert len(s.search(text="a photo", k=3)) == 3
    s.close()
