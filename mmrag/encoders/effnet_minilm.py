"""``effnet-minilm``: the offline default encoder.

Texts: all-MiniLM-L6-v2 (384-d). Images: EfficientNet-Lite2 (default bridge) or Lite0 features brought into the text space
by a bridge (a closed-form linear map, see ``bridge.py``). The image design vector combines

* the pooled 1280-d features (power-normalised: sqrt, then standardised), and
* a "class mix": the ImageNet class probabilities times the MiniLM embeddings of the class
  names, i.e. what the classifier believes, already written in the text space,
* mid-level features: pooled outputs of the last blocks of stages 5-7 (624-d),

each weighted, averaged over the views listed in the recipe (centre crop, whole image, mirror).
The recipe travels inside the bridge file so features always match the map they were fitted for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.encoders.base import ENCODERS, Encoder, ImageInput, l2_normalize
from mmrag.encoders.bridge import UNREADABLE, Bridge
from mmrag.errors import ImageError, ModelUnavailableError

# flickr8k-train-v2 (the default): EfficientNet-Lite2 + the zero-shot channel, better out of
# domain; flickr8k-train: EfficientNet-Lite0, the first shipped bridge, kept loadable.
SHIPPED_BRIDGES = {"flickr8k-train": "bridge_flickr8k_train.npz",
                   "flickr8k-train-v2": "bridge_flickr8k_train_v2.npz"}
# Settings chosen on dev for the encoder (the relevance fit, the clarify threshold, the keyword
# weight, RIR's knn) were re-chosen with this bridge; re-choose them when the default changes.
DEFAULT_BRIDGE = "flickr8k-train-v2"
# Chosen on the Flickr8k dev split (docs/benchmarks.md, benchmarks/tune_bridge.py): Lite0 bridge.
DEFAULT_LAMBDA = 3000.0
# The v2 bridge's settings, chosen on Flickr8k dev + COCO dev (benchmarks/bench_encoder_ood.py).
V2_LAMBDA = 10000.0
V2_ZEROSHOT_WEIGHT = 0.3


@dataclass
class FeatureRecipe:
    views: list[str] = field(default_factory=lambda: ["center"])
    size: int = 224
    backbone: str = "lite0"  # efficientnet_lite.VARIANTS
    pooled_power: float = 0.5  # 0.5 = sqrt; 1 = raw
    pooled_weight: float = 1.0
    classmix_weight: float = 1.0
    mid_weight: float = 0.0  # mid-level features (efficientnet_lite.MID_BLOCKS); 0 = unused
    temperature: float = 1.0  # softmax temperature on the ImageNet logits
    class_template: str = "a photo of a {}."
    center_text: bool = True  # compare against text embeddings centred like the fit targets
    # Per-dimension standardisation, filled in by fitting (train statistics).
    pooled_mean: list[float] | None = None
    pooled_std: list[float] | None = None
    mix_mean: list[float] | None = None
    mix_std: list[float] | None = None
    mid_mean: list[float] | None = None
    mid_std: list[float] | None = None


def default_recipe() -> FeatureRecipe:
    """The recipe of the shipped bridge (chosen on Flickr8k dev, see docs/benchmarks.md):
    centre crop + mirror; sqrt-pooled head features, the class mix and mid-level features,
    equal weights."""
    return FeatureRecipe(views=["center", "flip"], mid_weight=1.0)


def v2_recipe() -> FeatureRecipe:
    """The default bridge's recipe: EfficientNet-Lite2 at its 260 px, centre crop only (the
    mirror view added < 0.5 point at twice the cost), sqrt-pooled + class mix + mid-level."""
    return FeatureRecipe(views=["center"], size=260, backbone="lite2", mid_weight=1.0)


def fit_default_bridge(corpus, progress: bool = True) -> Bridge:
    """The command that made the shipped default bridge (``flickr8k-train-v2``), on Flickr8k
    train: ``fit_default_bridge(read_corpus("flickr8k", DIR, split="train")).save(PATH)``."""
    return fit_effnet_bridge(corpus, v2_recipe(), method="ridge", lam=V2_LAMBDA, progress=progress,
                             zeroshot_weight=V2_ZEROSHOT_WEIGHT)


def imagenet_class_synonyms() -> list[list[str]]:
    text = resources.files("mmrag.assets").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return [[n.strip() for n in line.split(",") if n.strip()] for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    return [names[0] for names in imagenet_class_synonyms()]


# Prompt ensemble of the zero-shot channel (CLIP's practice): a class's text vector is the mean
# of these templates over its first two synonyms ("teddy" alone reads as a name, "teddy bear"
# does not), so no single phrasing decides.
ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "a close-up photo of a {}.",
                      "a {} in the scene.", "there is a {} in the picture.")
ZEROSHOT_SYNONYMS = 2


def zeroshot_class_text(text_encoder, templates=ZEROSHOT_TEMPLATES, synonyms: int = ZEROSHOT_SYNONYMS) -> np.ndarray:
    """[1000, 384] unit MiniLM vectors of the ImageNet classes, prompt-ensembled."""
    names = [syn[:synonyms] for syn in imagenet_class_synonyms()]
    texts = [t.format(n) for ns in names for n in ns for t in templates]
    E = text_encoder.embed(texts)
    owner = np.repeat(np.arange(len(names)), [len(ns) * len(templates) for ns in names])
    out = np.zeros((len(names), E.shape[1]), np.float64)
    np.add.at(out, owner, E)
    return l2_normalize(out).astype(np.float32)


def resolve_bridge(bridge: str | Path | None) -> Path:
    name = bridge or DEFAULT_BRIDGE
    if str(name) in SHIPPED_BRIDGES:
        p = Path(str(resources.files("mmrag.assets").joinpath(SHIPPED_BRIDGES[str(name)])))
        if not p.exists():
            raise ModelUnavailableError(
                f"shipped bridge {name!r} is missing from the package ({p}); "
                "refit it with `mmrag bridge fit` (see README)"
            )
        return p
    p = Path(name)
    if not p.exists():
        raise ModelUnavailableError(
            f"bridge {str(name)!r} not found: give a file from `mmrag bridge fit` or one of {sorted(SHIPPED_BRIDGES)}"
        )
    return p


class RawImageFeatures:
    """Image -> unstandardised parts of the design vector (pooled, class mix)."""

    def __init__(self, recipe: FeatureRecipe, text_encoder, backend: str = "onnx", class_text: np.ndarray | None = None,
                 threads: int | None = None):
        from mmrag.encoders.image_features import EfficientNetFeaturizer

        self.recipe = recipe
        self.featurizer = EfficientNetFeaturizer(size=recipe.size, views=recipe.views, backend=backend, threads=threads,
                                                 variant=recipe.backbone)
        if class_text is None:
            names = imagenet_class_names()
            class_text = text_encoder.embed([recipe.class_template.format(n) for n in names])
        self.class_text = class_text

    def __call__(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False,
                 per_view: bool = False, with_probs: bool = False):
        """(pooled, class mix, mid, errors), each [n, dim] (view mean) or with ``per_view``
        [n, views, dim]; ``with_probs`` puts the class probabilities before errors."""
        bar = None
        if progress and not callable(progress) and len(images) > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(images), desc="embedding images", unit="img", leave=False)

        def tick(done: int) -> None:
            if bar is not None:
                bar.n = done
                bar.refresh()
            elif callable(progress):
                progress(done)

        try:
            f = self.featurizer.features(images, batch_size=batch_size, progress=tick)
        finally:
            if bar is not None:
                bar.close()
        r = self.recipe
        pooled = np.maximum(f.pooled, 0.0) ** r.pooled_power  # [n, views, 1280]
        z = f.logits / r.temperature
        z = np.exp(z - z.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)
        if per_view:  # the design is linear in the views, so the view mean of rows = row of means
            out = (pooled, probs @ self.class_text, f.mid, probs)
        else:
            p = probs.mean(1)
            out = (pooled.mean(1), p @ self.class_text, f.mid.mean(1), p)  # mix: [n, 384]
        return (*out, f.errors) if with_probs else (*out[:3], f.errors)


def fuse_zeroshot(bridge: Bridge, mapped: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Late fusion of the zero-shot channel: the class probabilities times the prompt-ensembled
    class-name vectors read as a caption of the image (centred and whitened like one), added
    with the bridge's ``zeroshot_weight``. It needs no training pair, so classes that the
    training captions never name (giraffe, broccoli) still reach the right words."""
    w = bridge.config.zeroshot_weight
    table = bridge.extras.get("zs_class_text")
    if not w or table is None:
        return mapped
    return l2_normalize(mapped + w * bridge.center_text(probs @ table))


def design_matrix(pooled: np.ndarray, mix: np.ndarray, r: FeatureRecipe, mid: np.ndarray | None = None) -> np.ndarray:
    """Standardise each part with the fit statistics and weight it; parts are scaled by
    1/sqrt(dim) so their weights are comparable whatever their sizes."""
    parts = []
    if r.pooled_weight:
        p = (pooled - np.asarray(r.pooled_mean, np.float32)) / np.asarray(r.pooled_std, np.float32)
        parts.append(p * (r.pooled_weight / np.sqrt(p.shape[1])))
    if r.classmix_weight:
        m = (mix - np.asarray(r.mix_mean, np.float32)) / np.asarray(r.mix_std, np.float32)
        parts.append(m * (r.classmix_weight / np.sqrt(m.shape[1])))
    if r.mid_weight:
        if mid is None:
            raise ValueError("recipe uses mid-level features but none were given")
        d = (mid - np.asarray(r.mid_mean, np.float32)) / np.asarray(r.mid_std, np.float32)
        parts.append(d * (r.mid_weight / np.sqrt(d.shape[1])))
    if not parts:
        raise ValueError("recipe uses no image feature (both weights are 0)")
    return np.concatenate(parts, axis=1).astype(np.float32)


def fill_standardisation(recipe: FeatureRecipe, pooled: np.ndarray, mix: np.ndarray,
                         mid: np.ndarray | None = None) -> None:
    if mid is not None:
        recipe.mid_mean = mid.mean(0).tolist()
        recipe.mid_std = (mid.std(0) + 1e-6).tolist()
    recipe.pooled_mean = pooled.mean(0).tolist()
    recipe.pooled_std = (pooled.std(0) + 1e-6).tolist()
    recipe.mix_mean = mix.mean(0).tolist()
    recipe.mix_std = (mix.std(0) + 1e-6).tolist()


@ENCODERS.register("effnet-minilm")
class EffnetMinilmEncoder(Encoder):
    """The offline default: EfficientNet-Lite2 (Lite0 with the flickr8k-train bridge) + bridge -> all-MiniLM-L6-v2 space (384-d)."""

    dim = 384

    def __init__(self, bridge: str | Path | Bridge | None = None, backend: str = "onnx",
                 text_model_dir: str | Path | None = None, recipe: FeatureRecipe | None = None,
                 text_backend: str | None = None, text_threads: int | None = None):
        from mmrag.encoders.minilm import MiniLMTextEncoder

        # backend: the image network's; text_backend: MiniLM's (None: ONNX Runtime if installed)
        self.text = MiniLMTextEncoder(text_model_dir, backend=text_backend, threads=text_threads)
        if bridge is None and recipe is None:
            # named even when it is the default, so an index's manifest still says which bridge
            # built it after the default changes (an in-memory Bridge has no name)
            bridge = DEFAULT_BRIDGE
        self._bridge_arg = None if isinstance(bridge, Bridge) else (str(bridge) if bridge else None)
        self.prior_model = None  # the text->image image prior (mmrag.encoders.image_prior), if fitted
        if isinstance(bridge, Bridge) or (bridge is None and recipe is not None):
            self.bridge = bridge
        else:
            path = resolve_bridge(bridge)
            try:
                self.bridge = Bridge.load(path)
            except UNREADABLE as e:
                raise ModelUnavailableError(f"bridge {str(path)!r} is unreadable ({type(e).__name__}: {e}); "
                                            "refit it with `mmrag bridge fit`") from None
            from mmrag.encoders.image_prior import load_for_bridge

            self.prior_model = load_for_bridge(path, self.bridge, shipped=str(bridge) in SHIPPED_BRIDGES)
        if recipe is None:
            recipe = FeatureRecipe(**self.bridge.config.recipe)
        self.recipe = recipe
        self.backend = backend
        self._raw: RawImageFeatures | None = None
        self._image_threads: int | None = None
        self.name = "effnet-minilm"

    def spec(self) -> tuple[str, dict]:
        return "effnet-minilm", ({"bridge": self._bridge_arg} if self._bridge_arg else {})

    def _fingerprint_spec(self) -> tuple[str, dict]:
        # the bridge's identity is its content (_fingerprint_update), not the name it was given by
        name, options = self.spec()
        return name, {k: v for k, v in options.items() if k != "bridge"}

    def _fingerprint_update(self, h) -> None:
        bridge = self.bridge
        if bridge is not None:
            h.update(np.ascontiguousarray(bridge.y_mean).tobytes())
            bank = bridge.extras.get("hub_bank")
            if bank is not None:
                h.update(np.ascontiguousarray(bank[:64]).tobytes())
            h.update(str(bridge.HUB_BETA).encode())
            if bridge.config.method != "ridge" or bridge.config.zeroshot_weight:  # (older bridges keep their id)
                h.update(f"{bridge.config.method}:{bridge.config.zeroshot_weight}".encode())
        h.update(str(self.recipe.center_text).encode())

    def set_threads(self, threads: int | None) -> None:
        """Intra-op threads of the text model (the server's ``model_threads``)."""
        self.text.set_threads(threads)

    def set_image_threads(self, threads: int | None) -> None:
        """Intra-op threads of the image network's ONNX Runtime session (None: cores, at most 8);
        the server's ``image_threads``. Takes effect now if the network is loaded, else when it loads."""
        self._image_threads = threads
        if self._raw is not None:
            self._raw.featurizer.set_threads(threads)

    @property
    def raw(self) -> RawImageFeatures:
        if self._raw is None:  # loading the image network is deferred: text-only use stays fast
            ct = self.bridge.extras.get("class_text") if self.bridge is not None else None
            self._raw = RawImageFeatures(self.recipe, self.text, self.backend, class_text=ct,
                                         threads=self._image_threads)
        return self._raw

    def embed_texts(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        t = self.text.embed(texts, batch_size=batch_size, progress=progress)
        if self.recipe.center_text and self.bridge is not None:
            t = self.bridge.center_text(t)
        return t

    def caption_prior(self, text_vectors: np.ndarray) -> np.ndarray | None:
        """Per-caption hubness prior for image->caption scoring (``cos - prior``); see Bridge."""
        return self.bridge.caption_prior(text_vectors) if self.bridge is not None else None

    def image_prior(self, image_vectors: np.ndarray) -> np.ndarray | None:
        """Per-image hubness prior for text->image scoring (see mmrag.encoders.image_prior)."""
        return self.prior_model.prior(image_vectors) if self.prior_model is not None else None

    def image_prior_gate(self) -> float | None:
        return self.prior_model.gate if self.prior_model is not None else None

    def image_design(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False):
        X, _, errors = self._design_and_probs(images, batch_size, progress)
        return X, errors

    def _design_and_probs(self, images, batch_size, progress):
        pooled, mix, mid, probs, errors = self.raw(images, batch_size=batch_size, progress=progress, with_probs=True)
        return design_matrix(pooled, mix, self.recipe, mid), probs, errors

    def embed_images_safe(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False):
        """Like embed_images, but unreadable images give zero rows and an error by position."""
        if self.bridge is None:
            raise ModelUnavailableError("this encoder has no bridge yet: fit one with `mmrag bridge fit`")
        X, probs, errors = self._design_and_probs(images, batch_size, progress)
        out = fuse_zeroshot(self.bridge, self.bridge.transform(X), probs)
        if errors:
            out[list(errors)] = 0.0
        return out, errors

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out, errors = self.embed_images_safe(images, batch_size, progress)
        if errors:
            i, reason = next(iter(errors.items()))
            raise ImageError(reason if len(errors) == 1 else f"{len(errors)} unreadable images, first: {reason}")
        return out

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "recipe": {k: v for k, v in asdict(self.recipe).items()
                                                               if not k.endswith(("_mean", "_std"))},
                "bridge": self.bridge.info if self.bridge is not None else None}


def fit_effnet_bridge(corpus, recipe: FeatureRecipe | None = None, method: str = "ridge", lam: float = 100.0,
                      backend: str = "onnx", progress: bool = True, hub_bank_size: int = 1000,
                      text_whitening: float = 0.5, contrastive=None, zeroshot_weight: float = 0.0,
                      log=None) -> Bridge:
    """Fit the image->text bridge on a corpus with captions (the ``mmrag bridge fit`` job).

    Targets: the mean of each image's normalised caption embeddings. Unreadable images and
    images without captions are left out of the fit. ``method`` "ridge"/"procrustes": the closed
    form; "infonce": ridge, then refined for ranking with ``contrastive`` (a
    :class:`~mmrag.encoders.contrastive.ContrastiveConfig`; deterministic for its seed).
    ``zeroshot_weight`` > 0 adds the zero-shot channel (:func:`fuse_zeroshot`).
    """
    from mmrag.encoders.bridge import BridgeConfig
    from mmrag.encoders.minilm import MiniLMTextEncoder
    from mmrag.errors import CorpusError

    if method not in ("ridge", "procrustes", "infonce"):
        raise ValueError(f"unknown bridge method {method!r}: ridge, procrustes or infonce")
    if zeroshot_weight < 0 or not np.isfinite(zeroshot_weight):
        raise ValueError(f"zero-shot weight must be >= 0, got {zeroshot_weight}")
    recipe = recipe or FeatureRecipe()
    items = [it for it in corpus.items if it.captions]
    if len(items) < 2:
        raise CorpusError(f"corpus {corpus.name!r} has {len(items)} captioned images; a bridge needs at least 2")
    text = MiniLMTextEncoder()
    raw = RawImageFeatures(recipe, text, backend)
    pooled_v, mix_v, mid_v, probs_v, errors = raw([it.path for it in items], progress=progress, per_view=True,
                                                  with_probs=True)
    keep = np.array([i not in errors for i in range(len(items))])
    pooled_v, mix_v, mid_v, probs = pooled_v[keep], mix_v[keep], mid_v[keep], probs_v[keep].mean(1)
    pooled, mix, mid = pooled_v.mean(1), mix_v.mean(1), mid_v.mean(1)
    kept = [it for it, k in zip(items, keep) if k]
    caps = [c for it in kept for c in it.captions]
    owner = np.repeat(np.arange(len(kept)), [len(it.captions) for it in kept])
    T = text.embed(caps, progress=progress)
    Y = np.zeros((len(kept), T.shape[1]), np.float64)
    np.add.at(Y, owner, T)
    Y = l2_normalize(Y / np.bincount(owner)[:, None])
    fill_standardisation(recipe, pooled, mix, mid)
    X = design_matrix(pooled, mix, recipe, mid)
    info = {"corpus": corpus.name, "root": str(corpus.root), "n_images": int(len(kept)),
            "n_captions": len(caps), "skipped_images": len(errors)}
    extras = {"class_text": raw.class_text}
    if zeroshot_weight:
        extras["zs_class_text"] = zeroshot_class_text(text)
    config = BridgeConfig(method="ridge" if method == "infonce" else method, lam=lam, recipe=asdict(recipe),
                          text_whitening=text_whitening, zeroshot_weight=float(zeroshot_weight))
    bridge = Bridge.fit(X, Y, config, info=info, extras=extras)
    if text_whitening:
        bridge.whiten_text_space(T, text_whitening)
    if method == "infonce":
        from mmrag.encoders.contrastive import ContrastiveConfig, train_contrastive

        cfg = contrastive or ContrastiveConfig()
        Xv = np.stack([design_matrix(pooled_v[:, v], mix_v[:, v], recipe, mid_v[:, v])
                       for v in range(pooled_v.shape[1])], 1) - bridge.x_mean
        M = bridge.extras.get("text_whitening")
        W0 = bridge.W if M is None else bridge.W @ M
        W = train_contrastive(Xv, bridge.center_text(T), owner, W0, cfg, log=log)
        bridge = Bridge(W, bridge.x_mean, bridge.y_mean, replace(config, method="infonce", whitened_output=True),
                        info={**info, "contrastive": cfg.as_dict()}, extras=bridge.extras)
    # A fixed random bank of mapped training images for the captions' hubness prior.
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(X), size=min(hub_bank_size, len(X)), replace=False))
    bridge.extras["hub_bank"] = fuse_zeroshot(bridge, bridge.transform(X[pick]), probs[pick])
    return bridge
