"""The ``clip`` encoder: a CLIP model's two towers run through ONNX Runtime (no torch at run time).

A model is a directory holding the two exported towers, in either of two layouts:

* Hugging Face / Optimum / Xenova (transformers.js) layout: ``onnx/vision_model.onnx`` and
  ``onnx/text_model.onnx`` (or the same names at top level), with ``config.json``,
  ``preprocessor_config.json`` and the tokenizer (``vocab.json`` + ``merges.txt`` or
  ``tokenizer.json``). Inputs ``pixel_values`` and ``input_ids`` (+ ``attention_mask`` when the
  graph takes it); outputs ``image_embeds`` / ``text_embeds``, the projected embeddings.
* open_clip layout: ``visual.onnx`` taking ``image`` [n, 3, H, W] and ``textual.onnx`` taking
  ``text`` int64 [n, 77], each returning the projected embedding; optional ``open_clip_config.json``
  for resolution and mean/std; OpenAI's vocabulary unless the directory has its own.

``model`` may also be a Hugging Face hub id, downloaded with ``huggingface_hub`` when online.
``export_clip_to_onnx`` writes either layout from a ``transformers.CLIPModel``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from mmrag.corpus.images import open_image
from mmrag.encoders.base import ENCODERS, Encoder, ImageInput, batched, l2_normalize, progress_bar
from mmrag.encoders.clip_tokenizer import CONTEXT_LENGTH, ClipTokenizer, openai_vocab_from_bpe_gz
from mmrag.encoders.clip_transform import CLIP_MEAN, CLIP_STD, ClipTransform
from mmrag.errors import ModelUnavailableError

DEFAULT_MODEL = "Xenova/clip-vit-base-patch32"

# (layout, vision file, text file), searched in this order.
_LAYOUTS = [
    ("hf", "onnx/vision_model.onnx", "onnx/text_model.onnx"),
    ("hf", "vision_model.onnx", "text_model.onnx"),
    ("open_clip", "visual.onnx", "textual.onnx"),
    ("open_clip", "onnx/visual.onnx", "onnx/textual.onnx"),
]
# What a hub download fetches: configs, tokenizer, and only the fp32 towers (not the quantised /
# fp16 variants that share the repository), including external-data files next to them.
_HUB_PATTERNS = [
    "*.json",
    "merges.txt",
    "*.txt.gz",
    "vision_model.onnx*",
    "text_model.onnx*",
    "onnx/vision_model.onnx*",
    "onnx/text_model.onnx*",
    "visual.onnx*",
    "textual.onnx*",
    "onnx/visual.onnx*",
    "onnx/textual.onnx*",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_LOCAL_HINT = (
    "pass a local directory with --encoder-model DIR (Python: create_encoder('clip', model=DIR)) "
    "holding onnx/vision_model.onnx + onnx/text_model.onnx (Hugging Face/Optimum/Xenova export) "
    "or visual.onnx + textual.onnx (open_clip export); "
    "mmrag.encoders.clip_onnx.export_clip_to_onnx writes one from a transformers CLIPModel"
)
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


# ---------------------------------------------------------------------------------------------
# Finding the model


def _looks_like_path(model: str) -> bool:
    if model.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in model:
        return True
    return Path(model).is_absolute() or not _HUB_ID.match(model)


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_dir(model: str) -> Path:
    """A local directory for ``model``: the directory itself, or a hub snapshot (downloaded or cached)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelUnavailableError(f"CLIP model {model!r} is a file, not a directory; {_LOCAL_HINT}")
    if _looks_like_path(model):
        raise ModelUnavailableError(f"CLIP model directory {model!r} does not exist; {_LOCAL_HINT}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelUnavailableError(
            f"CLIP model {model!r} is not a local directory and huggingface_hub is not installed "
            f"to download it; {_LOCAL_HINT}"
        ) from None
    offline = _hf_offline()
    try:
        path = snapshot_download(repo_id=model, allow_patterns=_HUB_PATTERNS, local_files_only=offline)
    except Exception as e:  # offline, unknown repo, gated, network error: all end the same way
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
            f"download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
        raise ModelUnavailableError(
            f"CLIP model {model!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub: {why}; {_LOCAL_HINT}"
        ) from None
    return Path(path)


def find_towers(directory: Path) -> tuple[str, Path, Path]:
    """(layout, vision graph, text graph) in ``directory``, or ModelUnavailableError saying what is missing."""
    for layout, vis, txt in _LAYOUTS:
        v, t = directory / vis, directory / txt
        if v.is_file() and t.is_file():
            return layout, v, t
    combined = [p.name for p in (directory / "model.onnx", directory / "onnx" / "model.onnx") if p.is_file()]
    extra = (
        f" (found a single combined graph {combined[0]}; export the two towers separately)"
        if combined
        else ""
    )
    raise ModelUnavailableError(
        f"{directory}: no CLIP ONNX towers found{extra}; expected "
        + " or ".join(f"{v} + {t}" for _, v, t in _LAYOUTS[:3])
        + f"; {_LOCAL_HINT}"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"{path}: unreadable JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# The encoder


def _session(path: Path, providers, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as e:
        raise ModelUnavailableError(f"{path}: cannot load ONNX graph ({type(e).__name__}: {e})") from None


def _pick(names: Sequence[str], preferred: Sequence[str]) -> str | None:
    for p in preferred:
        if p in names:
            return p
    return None


def _embedding_output(sess: ort.InferenceSession, preferred: Sequence[str], path: Path) -> str:
    outs = sess.get_outputs()
    name = _pick([o.name for o in outs], preferred)
    if name is not None:
        return name
    rank2 = [o.name for o in outs if len(o.shape) == 2]
    if rank2:
        return rank2[0]
    raise ModelUnavailableError(
        f"{path}: no projected-embedding output (looked for {', '.join(preferred)} or any [n, dim] "
        f"output; found {', '.join(f'{o.name}{o.shape}' for o in outs)})"
    )


def _run_rows(sess: ort.InferenceSession, output: str, feeds: dict, shape) -> np.ndarray:
    """Run a batch; one row at a time when the graph was exported with a fixed batch of 1."""
    n = next(iter(feeds.values())).shape[0]
    if shape and shape[0] == 1 and n > 1:
        rows = [sess.run([output], {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(n)]
        return np.asarray(np.concatenate(rows, axis=0), dtype=np.float32)
    (out,) = sess.run([output], feeds)
    return np.asarray(out, dtype=np.float32)


@ENCODERS.register("clip")
class ClipOnnxEncoder(Encoder):
    """CLIP image and text towers on ONNX Runtime; embeddings are L2-normalised float32."""

    def __init__(self, model: str | None = None, providers=None, threads: int | None = None):
        model = str(model) if model is not None else DEFAULT_MODEL
        self.model = model
        self.name = f"clip:{model}"
        self.model_dir = resolve_model_dir(model)
        self.layout, vis_path, txt_path = find_towers(self.model_dir)
        providers = providers or ["CPUExecutionProvider"]
        self._providers, self._vision_path, self._text_path = providers, vis_path, txt_path
        self._vision = _session(vis_path, providers, threads)
        self._text = _session(txt_path, providers, threads)

        # Vision graph: the pixel input and the projected output, by inspection.
        v_inputs = self._vision.get_inputs()
        if len(v_inputs) == 1:
            self._pixel_input = v_inputs[0]
        else:
            names = [i.name for i in v_inputs]
            pick = _pick(names, ["pixel_values", "image", "images", "input"])
            if pick is None:
                raise ModelUnavailableError(f"{vis_path}: cannot tell the image input among {names}")
            self._pixel_input = v_inputs[names.index(pick)]
        self._pixel_dtype = _ORT_DTYPES.get(self._pixel_input.type, np.float32)
        self._image_output = _embedding_output(
            self._vision, ["image_embeds", "image_features", "embeddings", "output"], vis_path
        )

        # Text graph: ids input, optional attention_mask / position_ids, projected output.
        t_inputs = {i.name: i for i in self._text.get_inputs()}
        ids_name = _pick(list(t_inputs), ["input_ids", "text", "input", "tokens"])
        if ids_name is None:
            ints = [n for n, i in t_inputs.items() if "int" in i.type and n not in ("attention_mask", "position_ids")]
            if len(ints) != 1:
                raise ModelUnavailableError(f"{txt_path}: cannot tell the token-id input among {list(t_inputs)}")
            ids_name = ints[0]
        self._ids_input = t_inputs[ids_name]
        self._mask_input = t_inputs.get("attention_mask")
        self._pos_input = t_inputs.get("position_ids")
        unknown = set(t_inputs) - {ids_name, "attention_mask", "position_ids"}
        if unknown:
            raise ModelUnavailableError(f"{txt_path}: unexpected text inputs {sorted(unknown)}")
        self._text_output = _embedding_output(
            self._text, ["text_embeds", "text_features", "embeddings", "output"], txt_path
        )

        # Configuration: context length, preprocessing, tokenizer.
        hf_cfg = _read_json(self.model_dir / "config.json")
        oc_cfg = _read_json(self.model_dir / "open_clip_config.json")
        oc_model = oc_cfg.get("model_cfg", oc_cfg)
        seq_dim = self._ids_input.shape[1] if len(self._ids_input.shape) == 2 else None
        context_length = (
            seq_dim
            if isinstance(seq_dim, int) and seq_dim > 0
            else (hf_cfg.get("text_config") or {}).get("max_position_embeddings")
            or (oc_model.get("text_cfg") or {}).get("context_length")
            or CONTEXT_LENGTH
        )
        self.tokenizer = ClipTokenizer.from_dir_or_default(self.model_dir, int(context_length))
        flavour = "torchvision" if self.layout == "open_clip" else "hf"
        try:
            self.transform = ClipTransform.from_model_dir(self.model_dir, flavour=flavour)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelUnavailableError(f"{self.model_dir}: unsupported preprocessing config ({e})") from None
        if self.transform.output_hw is None:
            shape = self._pixel_input.shape
            if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]):
                self.transform = ClipTransform(
                    resize=shape[2] if shape[2] == shape[3] else (shape[2], shape[3]),
                    crop=(shape[2], shape[3]),
                    mean=self.transform.mean,
                    std=self.transform.std,
                    resample=self.transform.resample,
                    flavour=flavour,
                )

        # Embedding width: from the graph when static, else from one tiny forward pass.
        out_shape = next(o.shape for o in self._text.get_outputs() if o.name == self._text_output)
        dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        self.dim = int(dim) if dim else int(self._run_text(self.tokenizer([""])).shape[1])

    # -- running --------------------------------------------------------------------------------
    def _run_text(self, ids: np.ndarray) -> np.ndarray:
        feeds = {self._ids_input.name: ids.astype(_ORT_DTYPES.get(self._ids_input.type, np.int64), copy=False)}
        if self._mask_input is not None:
            # Ones up to and including the end-of-text token, like a Hugging Face tokenizer's mask.
            eot = (ids == self.tokenizer.eot_token_id).argmax(axis=1)
            mask = (np.arange(ids.shape[1])[None, :] <= eot[:, None]).astype(np.int64)
            feeds[self._mask_input.name] = mask.astype(_ORT_DTYPES.get(self._mask_input.type, np.int64))
        if self._pos_input is not None:
            pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
            feeds[self._pos_input.name] = pos.astype(_ORT_DTYPES.get(self._pos_input.type, np.int64))
        return _run_rows(self._text, self._text_output, feeds, self._ids_input.shape)

    def _run_vision(self, pixels: np.ndarray) -> np.ndarray:
        feeds = {self._pixel_input.name: pixels.astype(self._pixel_dtype, copy=False)}
        return _run_rows(self._vision, self._image_output, feeds, self._pixel_input.shape)

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """NCHW float32 pixels exactly as fed to the vision graph."""
        return self.transform.batch([open_image(im) for im in images])

    def spec(self) -> tuple[str, dict]:
        """Registry name and options that rebuild this encoder (stored in an index's manifest)."""
        local = Path(self.model).expanduser()
        return "clip", {"model": str(local.resolve()) if local.is_dir() else self.model}

    def set_threads(self, threads: int | None) -> None:
        """Intra-op threads of the text tower (ONNX Runtime fixes them per session: rebuilt)."""
        self._text = _session(self._text_path, self._providers, threads)

    def set_image_threads(self, threads: int | None) -> None:
        """Intra-op threads of the image tower (the session is rebuilt)."""
        self._vision = _session(self._vision_path, self._providers, threads)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        total = math.ceil(len(images) / max(1, batch_size))
        parts = [
            self._run_vision(self.preprocess(chunk))
            for chunk in progress_bar(batched(images, max(1, batch_size)), total, "clip images", progress)
        ]
        return l2_normalize(np.concatenate(parts, axis=0))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        total = math.ceil(len(texts) / max(1, batch_size))
        parts = [
            self._run_text(self.tokenizer(chunk))
            for chunk in progress_bar(batched(texts, max(1, batch_size)), total, "clip texts", progress)
        ]
        return l2_normalize(np.concatenate(parts, axis=0))

    def __repr__(self) -> str:
        return f"ClipOnnxEncoder(model={self.model!r}, layout={self.layout!r}, dim={self.dim})"


# ---------------------------------------------------------------------------------------------
# Export from a transformers CLIPModel


def export_clip_to_onnx(
    model,
    out_dir: str | Path,
    layout: str = "hf",
    tokenizer_dir: str | Path | None = None,
    opset: int = 17,
) -> Path:
    """Write ``model`` (a ``transformers.CLIPModel``) as two ONNX towers in ``layout``.

    ``"hf"`` writes ``onnx/vision_model.onnx`` (``pixel_values`` -> ``image_embeds``) and
    ``onnx/text_model.onnx`` (``input_ids``, ``attention_mask`` -> ``text_embeds``) with
    ``config.json``, ``preprocessor_config.json`` and ``vocab.json`` + ``merges.txt``;
    ``"open_clip"`` writes ``visual.onnx`` (``image`` -> ``image_features``) and ``textual.onnx``
    (``text`` -> ``text_features``) with ``open_clip_config.json``. Tokenizer files are copied from
    ``tokenizer_dir`` when given; otherwise the HF layout gets OpenAI's vocabulary and the open_clip
    layout uses the bundled one at load time. The batch axis is dynamic. The graphs compute exactly
    what ``get_image_features`` / ``get_text_features`` compute, including the model's own rule for
    pooling the end-of-text token (argmax of the ids for old configs with ``eos_token_id == 2``,
    first ``eos_token_id`` otherwise), because tracing records the branch the model takes.
    """
    import torch

    if layout not in ("hf", "open_clip"):
        raise ValueError(f"layout must be 'hf' or 'open_clip', not {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    vcfg, tcfg = cfg.vision_config, cfg.text_config
    image_size = int(vcfg.image_size)
    n_ctx = int(tcfg.max_position_embeddings)

    class _Vision(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            pooled = self.m.vision_model(pixel_values=pixel_values).pooler_output
            return self.m.visual_projection(pooled)

    class _Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask=None):
            pooled = self.m.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return self.m.text_projection(pooled)

    was_training = model.training
    model.eval()
    pixels = torch.zeros(2, 3, image_size, image_size, dtype=torch.float32)
    ids = torch.zeros(2, n_ctx, dtype=torch.long)
    sot = tcfg.bos_token_id if isinstance(tcfg.bos_token_id, int) and tcfg.bos_token_id >= 0 else 49406
    eot = 49407 if tcfg.eos_token_id in (None, 2) or not isinstance(tcfg.eos_token_id, int) else tcfg.eos_token_id
    ids[:, 0] = sot
    ids[0, 1:4] = torch.tensor([320, 1125, 539]) % int(tcfg.vocab_size)
    ids[0, 4] = eot
    ids[1, 1] = eot
    mask = (torch.arange(n_ctx)[None, :] <= torch.tensor([[4], [1]])).long()

    if layout == "hf":
        (out / "onnx").mkdir(exist_ok=True)
        vis_path, txt_path = out / "onnx" / "vision_model.onnx", out / "onnx" / "text_model.onnx"
        v_in, v_out, t_ins, t_out = "pixel_values", "image_embeds", ["input_ids", "attention_mask"], "text_embeds"
        t_args: tuple = (ids, mask)
    else:
        vis_path, txt_path = out / "visual.onnx", out / "textual.onnx"
        v_in, v_out, t_ins, t_out = "image", "image_features", ["text"], "text_features"
        t_args = (ids,)

    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on shape checks it folds to constants are expected here: batch is the
        # only dynamic axis, and the text length is the model's fixed context length.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            _Vision(model),
            (pixels,),
            str(vis_path),
            input_names=[v_in],
            output_names=[v_out],
            dynamic_axes={v_in: {0: "batch"}, v_out: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        torch.onnx.export(
            _Text(model),
            t_args,
            str(txt_path),
            input_names=t_ins,
            output_names=[t_out],
            dynamic_axes={**{n: {0: "batch"} for n in t_ins}, t_out: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    model.train(was_training)

    if layout == "hf":
        cfg.to_json_file(str(out / "config.json"))
        pre = {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "do_convert_rgb": True,
        }
        (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2), encoding="utf-8")
    else:
        oc = {
            "model_cfg": {
                "embed_dim": int(cfg.projection_dim),
                "vision_cfg": {"image_size": image_size, "patch_size": int(vcfg.patch_size)},
                "text_cfg": {"context_length": n_ctx, "vocab_size": int(tcfg.vocab_size)},
            },
            "preprocess_cfg": {
                "mean": list(CLIP_MEAN),
                "std": list(CLIP_STD),
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
        }
        (out / "open_clip_config.json").write_text(json.dumps(oc, indent=2), encoding="utf-8")

    if tokenizer_dir is not None:
        src = Path(tokenizer_dir)
        for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    elif layout == "hf":
        write_openai_vocab(out)
    return out


def write_openai_vocab(directory: str | Path) -> None:
    """Write OpenAI CLIP's vocabulary as Hugging Face ``vocab.json`` + ``merges.txt``."""
    d = Path(directory)
    encoder, merges = openai_vocab_from_bpe_gz()
    (d / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
