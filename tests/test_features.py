"""Feature extraction on small data that ships in packages: scikit-learn's digits, tfds's
mock data and a tiny array_record dataset written offline with tfds's builder API."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from fennec_jax import estimators
from fennec_jax.encoders import features as F

NUM_CLASSES = 10


class MLP(nn.Module):
    """Flattens, one hidden layer (the penultimate features), optional source head."""

    hidden: int = 32
    num_classes: int | None = NUM_CLASSES

    @nn.compact
    def __call__(self, images):
        hidden = nn.relu(nn.Dense(self.hidden)(images.reshape(images.shape[0], -1)))
        logits = nn.Dense(self.num_classes)(hidden) if self.num_classes else None
        return hidden, logits


@pytest.fixture(scope="module")
def digits():
    """``(images uint8[N, 8, 8], labels[N])``: scikit-learn's digits (0..16) scaled to 0..255."""
    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)
    return images, data.target


PREPROCESS = functools.partial(F.preprocess_image, mean=(0.5,), std=(0.5,))  # -> [8, 8, 1]


@pytest.fixture(scope="module")
def models(digits):
    """``{"trained": params, "random": params}`` of one MLP; "trained" fits the first half of
    the digits for 150 full-batch Adam steps."""
    images, labels = digits
    x = np.stack([PREPROCESS(im) for im in images[: len(images) // 2]])
    y = labels[: len(images) // 2]
    model = MLP()
    params = model.init(jax.random.key(0), x[:1])
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, state):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[1], y).mean()

        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    trained, state = params, optimizer.init(params)
    for _ in range(150):
        trained, state = step(trained, state)
    accuracy = np.mean(np.argmax(model.apply(trained, x)[1], -1) == y)
    assert accuracy > 0.95
    return {"trained": trained, "random": params}


@pytest.fixture(scope="module")
def examples(digits):
    images, labels = digits
    return F.load_task_examples({"image": images, "label": labels}, preprocess=PREPROCESS,
                                batch_size=100)


def test_preprocess_image_scales_repeats_channels_and_resizes():
    image = np.array([[0, 255], [51, 102]], np.uint8)
    out = F.preprocess_image(image)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    expected = (image[..., None] / 255 - np.array(F.IMAGENET_MEAN)) / np.array(F.IMAGENET_STD)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # Bilinear resize keeps a constant image constant, per channel.
    rgb = np.broadcast_to(np.array([10, 100, 200], np.uint8), (5, 7, 3))
    resized = F.preprocess_image(rgb, size=16, mean=(0, 0, 0), std=(1, 1, 1))
    assert resized.shape == (16, 16, 3)
    np.testing.assert_allclose(resized, np.broadcast_to([10 / 255, 100 / 255, 200 / 255],
                                                         (16, 16, 3)), rtol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        F.preprocess_image(np.zeros((4, 4, 2), np.uint8))


def test_load_task_examples_from_arrays(digits, examples):
    images, labels = digits
    batches, task_labels = examples
    np.testing.assert_array_equal(task_labels, labels)
    assert task_labels.dtype == np.int32 and batches.num_examples == len(labels)
    chunks = list(batches)
    assert [len(c) for c in chunks] == [100] * 17 + [97]
    np.testing.assert_allclose(np.concatenate(chunks)[..., 0], (images / 255 - 0.5) / 0.5,
                               atol=1e-6)
    assert len(list(batches)) == 18  # re-iterable
    subset, subset_labels = F.load_task_examples({"image": images, "label": labels},
                                                 indices=[5, 3], preprocess=PREPROCESS)
    np.testing.assert_array_equal(subset_labels, labels[[5, 3]])
    np.testing.assert_allclose(next(iter(subset)), np.stack([PREPROCESS(images[5]),
                                                             PREPROCESS(images[3])]))
    with pytest.raises(ValueError, match="no key 'lbl'"):
        F.load_task_examples({"image": images, "label": labels}, label_key="lbl")
    with pytest.raises(ValueError, match="indices"):
        F.load_task_examples({"image": images, "label": labels}, indices=[len(labels)])


def test_extract_features_shapes_probs_and_batching_invariance(models, examples):
    batches, labels = examples
    apply_fn = MLP().apply
    reference = F.extract_features(apply_fn, models["trained"], batches, 64, with_probs=True)
    n = len(labels)
    assert reference.features.shape == (n, 32) and reference.probs.shape == (n, NUM_CLASSES)
    np.testing.assert_allclose(reference.probs.sum(-1), 1, rtol=1e-5)
    assert np.all(reference.probs >= 0)
    # Direct forward pass on all inputs at once.
    inputs = np.concatenate(list(batches))
    hidden, logits = apply_fn(models["trained"], inputs)
    np.testing.assert_allclose(reference.features, hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference.probs, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    # Other batch sizes, a plain array and uneven input batches give the same outputs.
    uneven = (inputs[a:b] for a, b in zip([0, 5, 105, 106, 1000], [5, 105, 106, 1000, n]))
    for source, batch_size in ((batches, 7), (inputs, 64), (uneven, 13)):
        other = F.extract_features(apply_fn, models["trained"], source, batch_size,
                                   with_probs=True, progress=False)
        np.testing.assert_allclose(other.features, reference.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.probs, reference.probs, rtol=1e-5, atol=1e-7)
    no_probs = F.extract_features(apply_fn, models["trained"], inputs[:10], 4, progress=False)
    assert no_probs.probs is None and no_probs.features.shape == (10, 32)


def test_extract_features_of_models_equals_each_model_alone(models, examples):
    batches, _ = examples
    inputs = np.concatenate(list(batches))[:50]
    names = ("trained", "random", "trained")
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *(models[n] for n in names))
    together = F.extract_features_of_models(MLP().apply, stacked, inputs, 16, with_probs=True)
    assert together.features.shape == (3, 50, 32) and together.probs.shape == (3, 50, NUM_CLASSES)
    for m, name in enumerate(names):
        alone = F.extract_features(MLP().apply, models[name], inputs, 16, with_probs=True, progress=False)
        np.testing.assert_allclose(together.features[m], alone.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.probs[m], alone.probs, rtol=1e-5, atol=1e-7)
    ragged = {"a": np.zeros((3, 2)), "b": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="one leading model axis"):
        F.extract_features_of_models(MLP().apply, ragged, inputs, 16)


def test_estimators_rank_the_trained_model_first(models, examples):
    """On the held-out half of the digits, LogME (features) and LEEP (probs) score the
    trained MLP above the same MLP at its random initialisation."""
    batches, labels = examples
    held_out = slice(len(labels) // 2, None)
    outputs = [F.extract_features(MLP().apply, models[name], batches, 256, with_probs=True,
                                  progress=False) for name in ("trained", "random")]
    logme = estimators.score_models("logme", [o.features[held_out] for o in outputs],
                                    labels[held_out])
    leep = estimators.score_models("leep", [o.features[held_out] for o in outputs],
                                   labels[held_out], [o.probs[held_out] for o in outputs])
    assert logme[0] > logme[1] and leep[0] > leep[1]


def test_extract_features_rejects_bad_input(models):
    headless = MLP(num_classes=None)
    params = headless.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
    inputs = np.zeros((3, 8, 8, 1), np.float32)
    assert F.extract_features(headless.apply, params, inputs, 2, progress=False).probs is None
    with pytest.raises(ValueError, match="no source head"):
        F.extract_features(headless.apply, params, inputs, 2, with_probs=True, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        F.extract_features(headless.apply, params, iter([]), 2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        F.extract_features(headless.apply, params, inputs, 0, progress=False)
    with pytest.raises(ValueError, match="every batch"):
        F.extract_features(headless.apply, params, [inputs, inputs[:, :4]], 2, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        F.extract_features(headless.apply, params, inputs * np.nan, 2, progress=False)


def test_tfds_mock_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        source = tfds.data_source("mnist", split="train")
        images, labels = F.load_task_examples(source, indices=range(2, 11), batch_size=4)
        expected_labels = [source[i]["label"] for i in range(2, 11)]
        expected_first = F.preprocess_image(source[2]["image"])
        chunks = list(images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert [c.shape for c in chunks] == [(4, 28, 28, 3)] * 2 + [(1, 28, 28, 3)]
    np.testing.assert_allclose(chunks[0][0], expected_first)
    model = MLP(num_classes=3)
    params = model.init(jax.random.key(0), chunks[0])
    out = F.extract_features(model.apply, params, chunks, 5, with_probs=True, progress=False)
    assert out.features.shape == (9, 32) and out.probs.shape == (9, 3)


def test_tfds_array_record_data_source(tmp_path):
    """A real array_record dataset (PNG images), written offline and read back through
    tfds.data_source without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pil = pytest.importorskip("PIL.Image")
    written = np.random.default_rng(0).integers(0, 256, (20, 6, 5), dtype=np.uint8)

    class FennecTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(6, 5, 1)),
                "label": tfds.features.ClassLabel(num_classes=20)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, image in enumerate(written):  # PIL images: PNG-encoded without TensorFlow
                yield i, {"image": pil.fromarray(image), "label": i}

    FennecTinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = tfds.data_source("fennec_tiny_images", split="train", data_dir=str(tmp_path))
    preprocess = functools.partial(F.preprocess_image, mean=(0.0,), std=(1.0,))
    images, labels = F.load_task_examples(source, preprocess=preprocess, batch_size=8)
    assert sorted(labels) == list(range(20))  # every record once (tfds shuffles the order)
    np.testing.assert_allclose(np.concatenate(list(images))[..., 0], written[labels] / 255,
                               atol=1e-6)


def test_save_and_load_features(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = jax.nn.softmax(rng.normal(size=(6, 3)))
    path = str(tmp_path / "sub" / "model_a.npz")
    F.save_features(path, feats, labels, probs)
    loaded = F.load_features(path)
    np.testing.assert_array_equal(loaded[0], feats)
    np.testing.assert_array_equal(loaded[1], labels)
    np.testing.assert_allclose(loaded[2], probs)
    F.save_features(path, feats, labels)  # overwrite, without probs
    assert F.load_features(path)[2] is None
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["model_a.npz"]  # no temp

    bad = str(tmp_path / "bad.npz")
    for arrays, message in (
        ({"features": feats}, r"missing \['labels'\]"),
        ({"features": feats, "labels": labels[:5]}, "labels has 5"),
        ({"features": feats * np.nan, "labels": labels}, "NaN"),
        ({"features": feats, "labels": labels, "probs": np.ones((6, 3))}, "probabilities"),
        ({"features": feats, "labels": labels, "extra": labels}, r"unexpected \['extra'\]"),
        ({"features": feats, "labels": labels + 0.5}, "integer"),
    ):
        np.savez(bad, **arrays)
        with pytest.raises(ValueError, match=message) as error:
            F.load_features(bad)
        assert "bad.npz" in str(error.value)
    (tmp_path / "text.npz").write_text("not an npz")
    with pytest.raises(ValueError, match="text.npz"):
        F.load_features(str(tmp_path / "text.npz"))
    with pytest.raises(ValueError, match="NaN"):
        F.save_features(path, feats * np.nan, labels)
