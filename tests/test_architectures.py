"""Flax vision families vs torchvision: parameter counts, state-dict names, shapes, training step.

Counts and names use ``jax.eval_shape`` (no memory, no compute); real forward passes run only
at width 0.125 on each family's smallest accepted input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from fennec_jax.archs import architectures as arch

# XLA options that more than halve CPU compile time of these deep nets; tests run each jit once.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# torchvision's published parameter counts (1000-class heads).
TORCHVISION_PARAMS = {
    ("resnet18", False): 11_689_512,
    ("resnet50", False): 25_557_032,
    ("resnet101", False): 44_549_160,
    ("resnet152", False): 60_192_808,
    ("alexnet", False): 61_100_840,
    ("googlenet", False): 6_624_904,
    ("googlenet", True): 13_004_888,  # GoogLeNet(aux_logits=True): + aux1 + aux2
    ("inception_v3", False): 23_834_568,  # Inception3(aux_logits=False)
    ("inception_v3", True): 27_161_264,  # Inception3() default: with AuxLogits
    ("densenet121", False): 7_978_856,
    ("densenet169", False): 14_149_480,
    ("densenet201", False): 20_013_928,
    ("mobilenet_v2", False): 3_504_872,
    ("mnasnet1_0", False): 4_383_312,
}


@functools.lru_cache(maxsize=None)
def abstract_variables(name: str, aux_logits: bool = False):
    """Shapes of ``build(name).init`` variables, traced once per test session."""
    kw = {"aux_logits": True} if aux_logits else {}
    model = arch.build(name, **kw)
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def normal(shape) -> jax.Array:
    """Standard normal test input (numpy: eager ``jax.random`` compiles per shape, slowly on CPU)."""
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def test_registry_covers_the_published_counts():
    assert {name for name, _ in TORCHVISION_PARAMS} == set(arch.ARCHITECTURES)


@pytest.mark.parametrize(("name", "aux_logits"), list(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name, aux_logits):
    assert count(abstract_variables(name, aux_logits)["params"]) == TORCHVISION_PARAMS[name, aux_logits]


def test_num_params_excludes_running_statistics():
    model = arch.build("resnet18")
    assert arch.num_params(model) == 11_689_512
    # 20 batch norms over 4,800 channels: running mean and var are batch_stats, not params.
    assert count(abstract_variables("resnet18")["batch_stats"]) == 2 * 4_800


@pytest.mark.parametrize(
    ("name", "num_params", "num_stats"),
    # len(list(model.parameters())) and the running mean/var buffers of torchvision's models.
    [("resnet18", 62, 40), ("resnet50", 161, 106), ("mobilenet_v2", 158, 104), ("densenet121", 364, 242)],
)
def test_tensor_counts_match_torchvision(name, num_params, num_stats):
    variables = abstract_variables(name)
    assert len(flatten_dict(variables["params"])) == num_params
    assert len(flatten_dict(variables["batch_stats"])) == num_stats


@pytest.mark.parametrize(
    ("name", "aux_logits", "key", "torch_shape"),
    [
        ("resnet18", False, "conv1.weight", (64, 3, 7, 7)),
        ("resnet18", False, "layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("resnet18", False, "layer2.0.downsample.1.running_var", (128,)),
        ("resnet50", False, "layer4.2.conv3.weight", (2048, 512, 1, 1)),
        ("resnet50", False, "fc.weight", (1000, 2048)),
        ("alexnet", False, "features.0.bias", (64,)),
        ("alexnet", False, "classifier.1.weight", (4096, 9216)),
        ("alexnet", False, "classifier.6.weight", (1000, 4096)),
        ("googlenet", False, "inception3a.branch3.1.conv.weight", (32, 16, 3, 3)),
        ("googlenet", False, "inception5b.branch4.1.bn.running_mean", (128,)),
        ("googlenet", True, "aux2.fc1.weight", (1024, 2048)),
        ("inception_v3", False, "Mixed_6b.branch7x7dbl_5.conv.weight", (192, 128, 1, 7)),
        ("inception_v3", False, "Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
        ("inception_v3", True, "AuxLogits.conv1.conv.weight", (768, 128, 5, 5)),
        ("densenet121", False, "features.denseblock4.denselayer16.conv2.weight", (32, 128, 3, 3)),
        ("densenet121", False, "features.transition3.conv.weight", (512, 1024, 1, 1)),
        ("densenet121", False, "features.norm5.weight", (1024,)),
        ("mobilenet_v2", False, "features.1.conv.0.0.weight", (32, 1, 3, 3)),
        ("mobilenet_v2", False, "features.17.conv.3.running_mean", (320,)),
        ("mobilenet_v2", False, "features.18.0.weight", (1280, 320, 1, 1)),
        ("mnasnet1_0", False, "layers.8.0.layers.3.weight", (48, 1, 3, 3)),
        ("mnasnet1_0", False, "layers.13.0.layers.6.weight", (320, 1152, 1, 1)),
        ("mnasnet1_0", False, "classifier.1.weight", (1000, 1280)),
    ],
)
def test_variables_carry_torchvision_state_dict_names(name, aux_logits, key, torch_shape):
    variables = abstract_variables(name, aux_logits)
    shapes = {
        arch.torch_name(path): leaf.shape
        for collection in variables.values()
        for path, leaf in flatten_dict(collection).items()
    }
    shape = shapes[key]
    # flax layouts: conv [kh, kw, in/groups, out], linear [in, out].
    torch_layout = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    assert torch_layout == torch_shape


@pytest.mark.parametrize(
    ("name", "module", "shape"),
    # torchvision's feature-map sizes at the pretrained input size (checks strides and ceil modes).
    [
        ("resnet50", "layer1", (1, 56, 56, 256)),
        ("resnet50", "layer4", (1, 7, 7, 2048)),
        ("googlenet", "inception3b", (1, 28, 28, 480)),
        ("googlenet", "inception4e", (1, 14, 14, 832)),
        ("googlenet", "inception5b", (1, 7, 7, 1024)),
        ("inception_v3", "Mixed_5d", (1, 35, 35, 288)),
        ("inception_v3", "Mixed_6e", (1, 17, 17, 768)),
        ("inception_v3", "Mixed_7c", (1, 8, 8, 2048)),
        ("densenet121", "features", (1, 7, 7, 1024)),
        ("mobilenet_v2", "features", (1, 7, 7, 1280)),
        ("mnasnet1_0", "layers", (1, 7, 7, 1280)),
        ("alexnet", "features", (1, 6, 6, 256)),
    ],
)
def test_feature_map_sizes_match_torchvision(name, module, shape):
    model = arch.build(name)
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    capture = functools.partial(model.apply, capture_intermediates=lambda m, _: m.name == module, mutable=True)
    _, state = jax.eval_shape(capture, abstract_variables(name), x)
    assert state["intermediates"][module]["__call__"][0].shape == shape


def test_torch_name_maps_leaves():
    assert arch.torch_name(("layer1", "0", "bn1", "mean")) == "layer1.0.bn1.running_mean"
    assert arch.torch_name(("features", "0", "1", "scale")) == "features.0.1.weight"
    with pytest.raises(ValueError, match="path"):
        arch.torch_name(("fc", "weight"))


# Smallest member of each family at width_multiplier 0.125: (input side, penultimate width).
# Sides are the minimum each family accepts (32 where any size works); MobileNetV2 and MNASNet
# keep their 1280-wide last layer, as torchvision's width rules do.
SMALL = {
    "resnet18": (32, 64),
    "alexnet": (63, 512),
    "googlenet": (15, 128),
    "inception_v3": (75, 256),
    "densenet121": (29, 128),
    "mobilenet_v2": (32, 1280),
    "mnasnet1_0": (32, 1280),
}


def random_variables(shapes, seed: int = 0):
    """Concrete variables shaped like ``shapes`` without compiling ``init`` (slow on CPU):
    kernels N(0, 1/fan_in), batch-norm scale and running variance 1, the rest 0."""
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        kind = path[-1].key
        if kind == "kernel":
            return jnp.asarray(rng.normal(0.0, np.prod(shape.shape[:-1]) ** -0.5, shape.shape), jnp.float32)
        return jnp.full(shape.shape, 1.0 if kind in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.parametrize("name", list(SMALL))
def test_small_forward_pass(name):
    side, feature_dim = SMALL[name]
    model = arch.build(name, num_classes=7, width_multiplier=0.125)
    x = normal((2, side, side, 3))
    variables = random_variables(jax.eval_shape(model.init, jax.random.key(0), x))
    forward = jax.jit(functools.partial(model.apply, return_features=True), compiler_options=FAST_COMPILE)
    logits, features = forward(variables, x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, feature_dim)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(features)).all()
    assert np.ptp(np.asarray(logits), axis=0).max() > 0  # the two images get different logits

    # training mode (shapes only; the training-step test runs it): dropout key, new running stats.
    train = functools.partial(model.apply, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
    train_logits, updates = jax.eval_shape(train, variables, x)
    assert train_logits.shape == (2, 7)
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(
        {k: v for k, v in variables.items() if k == "batch_stats"}
    )


def test_min_input_sizes():
    assert {name: arch.min_input_size(name) for name in SMALL} == {
        "resnet18": 1,
        "alexnet": 63,
        "googlenet": 15,
        "inception_v3": 75,
        "densenet121": 29,
        "mobilenet_v2": 1,
        "mnasnet1_0": 1,
    }
    assert arch.min_input_size("inception_v3", aux_logits=True) == 299
    assert [arch.input_size(n) for n in ("resnet50", "inception_v3")] == [224, 299]


def test_too_small_or_badly_shaped_input_raises():
    model = arch.build("alexnet", width_multiplier=0.125)
    with pytest.raises(ValueError, match="height and width >= 63"):
        model.init(jax.random.key(0), jnp.zeros((1, 62, 64, 3)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        model.init(jax.random.key(0), jnp.zeros((64, 64, 3)))


@pytest.mark.parametrize(("name", "side", "num_aux"), [("googlenet", 15, 2), ("inception_v3", 299, 1)])
def test_aux_heads_sow_logits_in_training(name, side, num_aux):
    model = arch.build(name, num_classes=5, width_multiplier=0.125, aux_logits=True)
    x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    train = functools.partial(
        model.apply, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats", "intermediates"]
    )
    logits, state = jax.eval_shape(train, variables, x)
    assert logits.shape == (2, 5)
    assert [aux.shape for aux in state["intermediates"]["aux_logits"]] == [(2, 5)] * num_aux
    _, state = jax.eval_shape(functools.partial(model.apply, mutable=["intermediates"]), variables, x)
    assert not state  # evaluation runs no aux head


def test_jitted_training_step_lowers_the_loss():
    model = arch.build("resnet18", num_classes=4, width_multiplier=0.125)
    images = normal((8, 32, 32, 3))
    labels = jnp.arange(8) % 4
    variables = arch.init_variables(model, images)
    optimizer = optax.sgd(0.05, momentum=0.9)

    def loss_fn(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    params, batch_stats, opt_state, first_loss, grads = step(params, batch_stats, opt_state)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(grads))
    old, new = flatten_dict(variables["batch_stats"]), flatten_dict(batch_stats)
    assert all(not np.allclose(old[k], new[k]) for k in old)  # running statistics moved
    for _ in range(5):
        params, batch_stats, opt_state, loss, _ = step(params, batch_stats, opt_state)
    assert np.isfinite(loss) and loss < 0.5 * first_loss


def test_max_pool_follows_torch_ceil_mode():
    x = jnp.arange(2 * 7 * 8 * 1, dtype=jnp.float32).reshape(2, 7, 8, 1)
    # torch: out = ceil((size + 2p - k) / s) + 1, minus 1 when the last window starts past size + p.
    assert arch.max_pool(x, 3, 2, ceil_mode=True).shape == (2, 3, 4, 1)
    assert arch.max_pool(x, 3, 2).shape == (2, 3, 3, 1)
    assert arch.max_pool(x, 2, 2, ceil_mode=True).shape == (2, 4, 4, 1)
    # height: ceil((7 + 2 - 2) / 2) + 1 = 5, but window 5 would start at 8 >= 7 + 1, so 4.
    assert arch.max_pool(x, 2, 2, padding=1, ceil_mode=True).shape == (2, 4, 5, 1)
    ref = np.asarray(x)[:, :, :, 0]
    got = np.asarray(arch.max_pool(x, 3, 2, ceil_mode=True))[:, :, :, 0]
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(got[:, i, j], ref[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2)))


def test_adaptive_avg_pool_uses_torch_windows():
    x = normal((2, 5, 7, 3))
    got = np.asarray(arch.adaptive_avg_pool(x, (3, 2)))
    # torch windows: rows [0,2) [1,4) [3,5); cols [0,4) [3,7).
    rows, cols = [(0, 2), (1, 4), (3, 5)], [(0, 4), (3, 7)]
    ref = np.stack(
        [np.stack([np.asarray(x)[:, a:b, c:d].mean(axis=(1, 2)) for c, d in cols], 1) for a, b in rows], 1
    )
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert arch.adaptive_avg_pool(x, (5, 7)) is x
    # growing 1x1 -> 6x6 replicates, as torch does for AlexNet on small inputs.
    np.testing.assert_allclose(arch.adaptive_avg_pool(x[:, :1, :1], 6), jnp.broadcast_to(x[:, :1, :1], (2, 6, 6, 3)))


def test_avg_pool_counts_padding_like_torch():
    got = np.asarray(arch.avg_pool(jnp.ones((1, 4, 4, 1)), 3, 1, 1))[0, :, :, 0]
    np.testing.assert_allclose(got[[0, 0, 1], [0, 1, 1]], [4 / 9, 6 / 9, 1.0], rtol=1e-6)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        arch.build("vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        arch.build("resnet18", num_classes=0)
    for width in (0.0, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="width_multiplier"):
            arch.build("resnet18", width_multiplier=width)
