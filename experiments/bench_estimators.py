"""Benchmark: fennec_jax.estimators.score_models against NumPy/SciPy loops over models.

  python experiments/bench_estimators.py --models=64 --n=1000 --dims=256,2048 \
      --classes=10 --out=bench/estimators.json

For each feature width D and each estimator: one warm-up call of ``score_models`` on all
M models (compile + run; the compile time reported is warm-up minus a steady run), then the
best of --repeats steady runs, against the best of --repeats runs of the NumPy/SciPy
baseline below looping over the models (measured in the same process, interleaved). The
baselines follow the authors' published NumPy code (e.g. LogME's SVD, H-Score's ``pinv``,
TransRate's per-class ``slogdet``, GBC's loop over class pairs, PACTran's L-BFGS-B); they
are the reference point, not tuned rewrites. With --numpy_models=K < M the baseline loop is
timed on the first K models and scaled by M / K (written as "numpy_models_timed").

The synthetic task: features of M models = class signal + low-rank nuisance + noise
through a random projection to D dims; probs = softmax of a random source head
(--source_classes classes). Both are float32 arrays [M, N, .] handed to score_models as is
(a 3-D array stands for M equally wide models; NumPy allocates it unaligned, so every call
copies it into JAX's memory) and looped over by the baselines. Each estimator is also
timed on the same arrays already held by JAX ("seconds_device_inputs": what a JAX forward
pass leaves, used in place). Writes {"D=<d>": {name: {"seconds", "compile_seconds",
"numpy_seconds", "speedup", "seconds_device_inputs", "speedup_device_inputs", ...}}} to
--out and prints a table. With --scaling_n, also {"scaling": ...}: the time of a few
models against N for the O(N^2) and iterative estimators (logme as a reference).
"""

import json
import os
import time

# Threading, unless set in the environment: single-threaded BLAS/LAPACK (OpenBLAS, used by
# NumPy, SciPy and jaxlib's LAPACK kernels) and single-threaded XLA Eigen. On this shared
# 2-core machine multi-threaded OpenBLAS spin-waits under load (a batch of 256 x 256 eigh
# ran 10-30x slower, for NumPy and JAX alike), and XLA's Eigen pool can deadlock on vmapped
# graphs (a score_models call hung here). Both sides get the same setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import numpy as np  # noqa: E402  (after XLA_FLAGS, before jax is imported)
import scipy.linalg  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.special  # noqa: E402
import scipy.stats  # noqa: E402
import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from fennec_jax.core import atomic_io
from fennec_jax import estimators  # noqa: E402

_MODELS = flags.DEFINE_integer("models", 64, "Candidate models M.")
_N = flags.DEFINE_integer("n", 1000, "Target samples N.")
_DIMS = flags.DEFINE_list("dims", ["256", "2048"], "Feature widths D to benchmark.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Target classes C.")
_SOURCE_CLASSES = flags.DEFINE_integer("source_classes", 1000, "Source-head classes Cs.")
_ESTIMATORS = flags.DEFINE_list("estimators", None, "Estimators to run (default: all).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (best is reported).")
_NUMPY_MODELS = flags.DEFINE_integer("numpy_models", None, "Time the NumPy loop on this "
                                     "many models and scale to M (default: all M).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "score_models batch_size (models "
                                   "mapped per vmapped chunk; bounds memory).")
_OUT = flags.DEFINE_string("out", "bench/estimators.json", "Output JSON.")
_SCALING_N = flags.DEFINE_list("scaling_n", [], "Also time --scaling_estimators at these "
                               "sample counts N (D = --scaling_dim, --scaling_models "
                               "models) and write a 'scaling' section.")
_SCALING_ESTIMATORS = flags.DEFINE_list(
    "scaling_estimators", ["logme", "parc", "nleep", "pactran_gauss", "pactran_dir"],
    "Estimators timed against N (logme: a linear-in-N reference).")
_SCALING_DIM = flags.DEFINE_integer("scaling_dim", 256, "Feature width D for --scaling_n.")
_SCALING_MODELS = flags.DEFINE_integer("scaling_models", 4, "Models M for --scaling_n.")


# ------------------------------------------------------------ NumPy/SciPy baselines

def np_logme(f, y):
    """thuml/LogME ``_fit_fixed_point``."""
    n, d = f.shape
    if n > d:
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        k = int(np.sum(s > 1e-10))
        s, u = s[:k], (f @ vh.T)[:, :k] / s[:k]
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    evidences = []
    for c in range(y.max() + 1):
        y_ = (y == c).astype(np.float64)
        x2 = (u.T @ y_) ** 2
        res_x2 = y_ @ y_ - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidences.append((d / 2 * np.log(alpha) + n / 2 * np.log(beta)
                          - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2 * res2
                          - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n)
    return np.mean(evidences)


def np_leep(p, y):
    n = len(y)
    joint = np.stack([p[y == c].sum(0) for c in range(y.max() + 1)]) / n
    marginal = joint.sum(0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    return np.mean(np.log((p @ conditional.T)[np.arange(n), y]))


def np_nce(p, y):
    z = p.argmax(1)
    joint = np.zeros((y.max() + 1, p.shape[1]))
    np.add.at(joint, (y, z), 1.0 / len(y))
    p_z = joint.sum(0)
    seen = p_z > 0
    conditional = joint[:, seen] / p_z[seen] + 1e-20
    return -np.sum(p_z[seen] * -np.sum(conditional * np.log(conditional), 0))


def _class_mean_rows(f, y):
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return g


def np_hscore(f, y):
    """The authors' ``getHscore``."""
    covf = np.cov(f, rowvar=False)
    covg = np.cov(_class_mean_rows(f, y), rowvar=False)
    return np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg)


def np_hscore_reg(f, y):
    """Transfer-Learning-Library ``regularized_h_score`` with scikit-learn's Ledoit-Wolf."""
    f = f - f.mean(0)
    n, d = f.shape
    f2 = f ** 2
    variances = f2.sum(0) / n
    mu = variances.sum() / d
    beta_ = np.sum(f2.T @ f2)
    delta_ = np.sum((f.T @ f) ** 2) / n ** 2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * variances.sum() + d * mu ** 2) / d
    a = 0.0 if min(beta, delta) == 0 else min(beta, delta) / delta
    cov = (1 - a) * (f.T @ f / n) + a * mu * np.eye(d)
    covg = np.cov(_class_mean_rows(f, y), rowvar=False)
    return np.trace(np.linalg.pinv(cov, rcond=1e-15) @ ((1 - a) * covg))


def _coding_rate(z, eps=1e-4):
    n, d = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]


def np_transrate(f, y):
    z = f - f.mean(0)
    k = y.max() + 1
    return _coding_rate(z) - sum(_coding_rate(z[y == c]) for c in range(k)) / k


def _np_gbc(f, y, spherical):
    """google-research ``gbc``: loop over ordered class pairs."""
    classes = np.unique(y)
    stats = {c: (f[y == c].mean(0), np.maximum(f[y == c].var(0), 1e-4)) for c in classes}
    total = 0.0
    for c1 in classes:
        for c2 in classes:
            if c1 == c2:
                continue
            (m1, s1), (m2, s2) = stats[c1], stats[c2]
            if spherical:
                s1, s2 = np.mean(s1), np.mean(s2)
            avg = (s1 + s2) / 2
            distance = (np.sum((m1 - m2) ** 2 / avg) / 8
                        + 0.5 * (np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1))
                                 - 0.5 * np.sum(np.log(s2))))
            total += np.exp(-distance)
    return -total


def np_gbc(f, y):
    return _np_gbc(f, y, True)


def np_gbc_diagonal(f, y):
    return _np_gbc(f, y, False)


def np_parc(f, y):
    sd = f.std(0)
    z = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    upper = np.triu_indices(len(y), 1)
    onehot = np.eye(y.max() + 1)[y]
    return 100 * scipy.stats.spearmanr((1 - np.corrcoef(z))[upper],
                                       (1 - np.corrcoef(onehot))[upper])[0]


def _iterative_a(a):
    x = a.sum(1)
    for _ in range(3):
        t = a @ x
        v = t / np.linalg.norm(t)
        t = a @ v
        x = t / np.linalg.norm(t)
    return x @ a @ v


def _sfda_posteriors(x, y, shrinkage):
    """TencentARC/SFDA ``SFDA.fit(...).predict_proba`` (scipy generalised eigh)."""
    classes, yi = np.unique(y, return_inverse=True)
    priors = np.bincount(yi) / len(y)
    means = np.stack([x[yi == k].mean(0) for k in range(len(classes))])
    sw = sum(priors[k] * np.atleast_2d(np.cov(x[yi == k].T, bias=1))
             for k in range(len(classes)))
    if shrinkage is None:
        shrinkage = max(np.exp(-5 * _iterative_a(sw)), 1e-10)
    d = sw.shape[0]
    st = np.cov(x.T, bias=1)
    st = (1 - shrinkage) * st + shrinkage * np.trace(st) / d * np.eye(d)
    shrunk = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / d * np.eye(d)
    evals, evecs = scipy.linalg.eigh(st - shrunk, shrunk)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
    return scipy.special.softmax(x @ coef.T + intercept, 1), shrinkage


def np_sfda(f, y):
    x = f.copy()
    n, num_classes = len(y), y.max() + 1
    prob, shrinkage = _sfda_posteriors(x, y, None)
    prob = scipy.special.softmax(prob, 1)
    means = np.stack([x[y == c].mean(0) for c in range(num_classes)])
    outer = (means.sum(0) - means) / (num_classes - 1)
    confidence = prob[np.arange(n), y][:, None]
    x = confidence * x + (1 - confidence) * outer[y]
    prob, _ = _sfda_posteriors(x, y, shrinkage)
    return prob[np.arange(n), y].mean()


def _nuclear(a):
    return np.linalg.svd(a, compute_uv=False).sum()


def np_ncti_components(f, y):
    """BUserName/NCTI ``NCTI_Score`` with exact PCA and scikit-learn's LDA solvers."""
    xc = f - f.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    z = xc @ vt[:64].T
    variances = s[:64] ** 2 / (len(y) - 1)
    shrinkage = max(np.exp(-variances[:32].sum()), 1e-10)
    n, classes = len(y), np.unique(y)
    priors = np.array([np.mean(y == c) for c in classes])
    means = np.stack([z[y == c].mean(0) for c in classes])
    if shrinkage == 1e-10:
        xbar = priors @ means
        within = z - means[np.searchsorted(classes, y)]
        std = within.std(0)
        std[std == 0] = 1
        _, s1, vt1 = np.linalg.svd(within / std / np.sqrt(n), full_matrices=False)
        rank = np.sum(s1 > 1e-4)
        scalings = (vt1[:rank] / std).T / s1[:rank]
        between = (np.sqrt(n * priors / (len(classes) - 1)) * (means - xbar).T).T @ scalings
        _, s2, vt2 = np.linalg.svd(between, full_matrices=False)
        scalings = scalings @ vt2.T[:, : np.sum(s2 > 1e-4 * s2[0])]
        coef = (means - xbar) @ scalings
        intercept = -0.5 * np.sum(coef ** 2, 1) + np.log(priors)
        coef = coef @ scalings.T
        intercept -= xbar @ coef.T
        low = ((z - xbar) @ scalings)[:, : len(classes) - 1]
    else:
        def shrunk(x):
            cov = np.cov(x.T, bias=1)
            return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(
                cov.shape[0])
        sw = sum(p * shrunk(z[y == c]) for p, c in zip(priors, classes))
        evals, evecs = scipy.linalg.eigh(shrunk(z) - sw, sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        coef = means @ evecs @ evecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        low = (z @ evecs)[:, : len(classes) - 1]
    proba = scipy.special.softmax(z @ coef.T + intercept, 1)
    low = low - low.mean(0)
    return np.array([_nuclear(low), proba[np.arange(n), np.searchsorted(classes, y)].mean(),
                     np.log(sum(_nuclear(proba[y == c]) for c in classes))])


def _minmax(v):
    return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)


def np_etran_components(f, y):
    energy = scipy.special.logsumexp(f, axis=-1)
    energy = np.sort(energy)[: max(1, 5 * len(energy) // 1000)].mean()
    classes, yi = np.unique(y, return_inverse=True)
    priors = np.bincount(yi) / len(y)
    means = np.stack([f[yi == k].mean(0) for k in range(len(classes))])
    logits = f @ means.T - 0.5 * (means ** 2).sum(1) + np.log(priors)
    return np.array([energy,
                     scipy.special.softmax(logits, 1)[np.arange(len(y)), yi].mean()])


def np_pactran_gauss(f, y):
    """google-research ``calculate_pac_gauss`` (features centred, lda_factor 1, s2 100/D)."""
    f = f - f.mean(0)
    num_classes = y.max() + 1
    onehot = np.eye(num_classes)[y]
    n, d = f.shape
    kd, ldas2 = d * num_classes, float(n)

    def split(theta):
        theta = theta.reshape(d + 1, num_classes)
        return theta[:d], theta[d:]

    def loss(theta):
        w, b = split(theta)
        logits = f @ w + b
        log_q = logits - scipy.special.logsumexp(logits, -1, keepdims=True)
        return (np.sum(onehot * (np.log(onehot + 1e-10) - log_q)) / n
                + 0.5 * np.sum(w ** 2) / ldas2)

    def grad(theta):
        w, b = split(theta)
        g = (scipy.special.softmax(f @ w + b, -1) - onehot) / n
        return np.concatenate([f.T @ g + w / ldas2, g.sum(0, keepdims=True)]).ravel()

    theta = np.concatenate([np.random.default_rng(0).normal(size=(d, num_classes)) * 0.03,
                            np.zeros((1, num_classes))]).ravel()
    theta = scipy.optimize.minimize(loss, theta, method="L-BFGS-B", jac=grad,
                                    options=dict(maxiter=100), tol=1e-6).x
    w, b = split(theta)
    p = scipy.special.softmax(f @ w + b, -1)
    h = np.sum((f ** 2).T @ (p - p ** 2) + 1 / ldas2) + np.sum(p - p ** 2)
    sigma2_inv = h * ldas2 / kd + 1e-10
    return -(loss(theta) + 0.5 * kd / ldas2 * (100.0 / d) * np.log(sigma2_inv))


def np_pactran_dir(p, y):
    onehot = np.eye(y.max() + 1)[y]
    counts = onehot.sum(0)[:, None]
    a0 = counts / counts.sum() + 1e-10
    q, log_s = p, np.log(p + 1e-10)
    for _ in range(10):
        aw = a0 + onehot.T @ q
        logits = (log_s + onehot @ scipy.special.digamma(aw)
                  - scipy.special.digamma(aw.sum(0))[None])
        log_q = logits - scipy.special.logsumexp(logits, -1, keepdims=True)
        q = np.exp(log_q)
    log_c0 = scipy.special.gammaln(a0.sum()) - scipy.special.gammaln(a0).sum()
    log_c = scipy.special.gammaln(aw.sum(0)) - scipy.special.gammaln(aw).sum(0)
    return np.sum(log_c0 - log_c - np.sum(q * (log_q - log_s), 0)) / onehot.size


def np_nleep(f, y, seed=0):
    """PCA (80% variance) + scikit-learn-style k-means++ / EM full-covariance mixture with
    5C components + LEEP with the log."""
    rng = np.random.default_rng(seed)
    xc = f - f.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), 0.8, side="right")) + 1
    x = xc @ vt[:k].T
    n, K = len(y), 5 * len(np.unique(y))
    centres = [x[rng.integers(n)]]
    closest = np.sum((x - centres[0]) ** 2, 1)
    for _ in range(1, K):
        cumulative = np.cumsum(closest)
        candidates = np.minimum(np.searchsorted(cumulative, rng.random(2 + int(np.log(K)))
                                                * cumulative[-1]), n - 1)
        distances = np.minimum(closest, ((x[None] - x[candidates][:, None]) ** 2).sum(-1))
        best = np.argmin(distances.sum(1))
        centres.append(x[candidates[best]])
        closest = distances[best]
    centres = np.array(centres)
    for _ in range(300):
        assign = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), 1)
        new = np.array([x[assign == j].mean(0) if np.any(assign == j) else centres[j]
                        for j in range(K)])
        shift, centres = np.sum((new - centres) ** 2), new
        if shift <= 1e-4 * np.mean(np.var(x, 0)):
            break
    resp = np.eye(K)[np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), 1)]

    def m_step(resp):
        nk = resp.sum(0) + 1e-15
        means = resp.T @ x / nk[:, None]
        chols = []
        for j in range(K):
            diff = x - means[j]
            cov = (resp[:, j] * diff.T) @ diff / nk[j] + 1e-6 * np.eye(k)
            chols.append(np.linalg.cholesky(cov))
        return nk / n, means, chols

    def log_resp(params):
        weights, means, chols = params
        log_prob = np.empty((n, K))
        for j in range(K):
            solved = scipy.linalg.solve_triangular(chols[j], (x - means[j]).T, lower=True)
            log_prob[:, j] = (-0.5 * (k * np.log(2 * np.pi) + np.sum(solved ** 2, 0))
                              - np.sum(np.log(np.diag(chols[j]))) + np.log(weights[j]))
        norm = scipy.special.logsumexp(log_prob, 1)
        return norm.mean(), log_prob - norm[:, None]

    params, bound = m_step(resp), -np.inf
    for _ in range(100):
        new_bound, lr = log_resp(params)
        params = m_step(np.exp(lr))
        done, bound = abs(new_bound - bound) < 1e-3, new_bound
        if done:
            break
    posteriors = np.exp(log_resp(params)[1])
    return np_leep(posteriors, y)


BASELINES = {
    "logme": np_logme, "leep": np_leep, "nce": np_nce, "hscore": np_hscore,
    "hscore_reg": np_hscore_reg, "nleep": np_nleep, "transrate": np_transrate,
    "gbc": np_gbc, "gbc_diagonal": np_gbc_diagonal, "parc": np_parc, "sfda": np_sfda,
    "ncti": np_ncti_components, "etran": np_etran_components,
    "pactran_gauss": np_pactran_gauss, "pactran_dir": np_pactran_dir,
}
COMBINE = {  # the candidate-normalised estimators: combine per-model components
    "ncti": lambda c: _minmax(c[:, 1]) + _minmax(c[:, 0]) - _minmax(c[:, 2]),
    "etran": lambda c: 0.15 * _minmax(c[:, 0]) + 0.85 * _minmax(c[:, 1]),
}


# ------------------------------------------------------------ task and timing

def synthetic_task(num_models, n, dim, num_classes, source_classes, seed=0):
    """``(features[M, N, D], labels[N], probs[M, N, Cs])`` float32 (as a forward pass gives
    them): each model sees class signal of its own strength, a 24-factor nuisance and
    noise, projected to ``dim`` dimensions and rectified."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    features = np.empty((num_models, n, dim), np.float32)
    probs = np.empty((num_models, n, source_classes), np.float32)
    for m in range(num_models):
        latent = np.concatenate([
            (0.5 + 2.0 * m / num_models) * rng.normal(size=(num_classes, 16))[labels],
            rng.normal(size=(n, 24))], 1)
        projection = rng.normal(size=(latent.shape[1], dim)) / np.sqrt(latent.shape[1])
        features[m] = np.maximum(latent @ projection + 0.3 * rng.normal(size=(n, dim)), 0)
        logits = rng.normal(size=(n, source_classes))
        logits[np.arange(n), labels * 7 % source_classes] += 1.0 + 3.0 * m / num_models
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs[m] = p / p.sum(1, keepdims=True)
    return features, labels, probs


def _best_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_one(name, features_list, labels, probs_list, device_inputs, repeats,
              numpy_models, batch_size):
    """Times of ``score_models`` on the float32 NumPy inputs (copied into JAX's memory on
    every call), on the same inputs already held by JAX (``device_inputs``: what a JAX
    forward pass leaves; no copy), and of the NumPy baseline loop."""
    estimator = estimators.get(name)
    inputs = probs_list if estimator.needs_probs else features_list
    options = {} if batch_size is None else {"batch_size": batch_size}
    run_jax = lambda: estimators.score_models(name, features_list, labels, probs_list,
                                              **options)
    run_device = lambda: estimators.score_models(name, *device_inputs[:1], labels,
                                                 device_inputs[1], **options)
    baseline = BASELINES[name]
    timed = inputs[:numpy_models]
    run_numpy = lambda: np.array([baseline(np.asarray(x, np.float64), labels)
                                  for x in timed])
    start = time.perf_counter()
    scores = run_jax()
    warm_up = time.perf_counter() - start
    run_device()
    jax_times, device_times, numpy_times = [], [], []
    for _ in range(repeats):  # interleaved, so all see the same machine load
        jax_times.append(_best_time(run_jax, 1)[0])
        device_times.append(_best_time(run_device, 1)[0])
        seconds, numpy_values = _best_time(run_numpy, 1)
        numpy_times.append(seconds)
    seconds, device_seconds = min(jax_times), min(device_times)
    numpy_seconds = min(numpy_times) * len(inputs) / len(timed)
    if name in COMBINE and len(timed) == len(inputs):
        numpy_values = COMBINE[name](numpy_values)
    agree = (float(np.max(np.abs(scores[: len(timed)] - numpy_values)))
             if len(timed) == len(inputs) or name not in COMBINE else None)
    return {"seconds": seconds, "compile_seconds": max(warm_up - seconds, 0.0),
            "numpy_seconds": numpy_seconds, "speedup": numpy_seconds / seconds,
            "seconds_device_inputs": device_seconds,
            "speedup_device_inputs": numpy_seconds / device_seconds,
            "numpy_models_timed": len(timed), "max_abs_diff_vs_numpy": agree}


def bench_scaling(names, sample_counts, num_models, dim, repeats):
    """``{name: {"N=<n>": seconds}}``: best steady ``score_models`` time of ``num_models``
    models at each N (after a warm-up call that compiles), plus the log-log slope between
    the smallest and largest N (time ~ N^slope)."""
    timings = {name: {} for name in names}
    for n in sample_counts:
        features_list, labels, probs_list = synthetic_task(
            num_models, n, dim, _CLASSES.value, _SOURCE_CLASSES.value)
        for name in names:
            run = lambda: estimators.score_models(name, features_list, labels, probs_list)
            run()
            timings[name][f"N={n}"] = _best_time(run, repeats)[0]
            print(f"{name:>14} N={n:<6} {timings[name][f'N={n}']:9.3f} s  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    low, high = min(sample_counts), max(sample_counts)
    for name in names:
        times = timings[name]
        times["slope"] = float(np.log(times[f"N={high}"] / times[f"N={low}"])
                               / np.log(high / low))
    return timings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    names = _ESTIMATORS.value or estimators.method_names()
    unknown = [n for n in names if n not in estimators.ESTIMATORS]
    if unknown:
        raise app.UsageError(f"--estimators: unknown {', '.join(unknown)}")
    numpy_models = _NUMPY_MODELS.value or _MODELS.value
    results = {}
    if os.path.exists(_OUT.value):  # keep other widths from earlier runs
        with open(_OUT.value) as f:
            results = json.load(f)
    for dim in (int(d) for d in _DIMS.value):
        features_list, labels, probs_list = synthetic_task(
            _MODELS.value, _N.value, dim, _CLASSES.value, _SOURCE_CLASSES.value)
        device_inputs = (jax.device_put(features_list), jax.device_put(probs_list))
        key = f"D={dim}"
        results.setdefault(key, {})
        print(f"\nM={_MODELS.value} models, N={_N.value}, D={dim}, C={_CLASSES.value}, "
              f"Cs={_SOURCE_CLASSES.value}")
        print(f"{'estimator':>14} {'jax s':>9} {'compile s':>9} {'numpy s':>9} "
              f"{'speedup':>8} {'on-device s':>11} {'speedup':>8}  max|diff|")
        for name in names:
            row = bench_one(name, features_list, labels, probs_list, device_inputs,
                            _REPEATS.value, numpy_models, _BATCH_SIZE.value)
            row.update(models=_MODELS.value, n=_N.value, classes=_CLASSES.value,
                       source_classes=_SOURCE_CLASSES.value,
                       load_average=os.getloadavg()[0], repeats=_REPEATS.value,
                       batch_size=_BATCH_SIZE.value, xla_flags=os.environ.get("XLA_FLAGS"),
                       openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"))
            results[key][name] = row
            diff = row["max_abs_diff_vs_numpy"]
            scaled = "" if row["numpy_models_timed"] == _MODELS.value else \
                f"  (numpy timed on {row['numpy_models_timed']} models, scaled)"
            print(f"{name:>14} {row['seconds']:9.3f} {row['compile_seconds']:9.2f} "
                  f"{row['numpy_seconds']:9.3f} {row['speedup']:7.1f}x "
                  f"{row['seconds_device_inputs']:11.3f} "
                  f"{row['speedup_device_inputs']:7.1f}x  "
                  f"{'-' if diff is None else f'{diff:.1e}'}{scaled}", flush=True)
            atomic_io.write_json(_OUT.value, results)
    if _SCALING_N.value:
        sample_counts = [int(n) for n in _SCALING_N.value]
        print(f"\nscaling with N: M={_SCALING_MODELS.value}, D={_SCALING_DIM.value}, "
              f"C={_CLASSES.value}, Cs={_SOURCE_CLASSES.value}")
        results["scaling"] = {
            "models": _SCALING_MODELS.value, "dim": _SCALING_DIM.value,
            "classes": _CLASSES.value, "source_classes": _SOURCE_CLASSES.value,
            "repeats": _REPEATS.value, "load_average": os.getloadavg()[0],
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "seconds": bench_scaling(_SCALING_ESTIMATORS.value, sample_counts,
                                     _SCALING_MODELS.value, _SCALING_DIM.value,
                                     _REPEATS.value)}
        atomic_io.write_json(_OUT.value, results)
    print(f"\nwrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
