"""Plain NumPy/SciPy float64 reference implementations of the forward-pass estimators.

They check the JAX estimators (``tests/test_estimators.py``) and are the baseline that
``experiments/bench_estimators.py`` times them against. Each follows the authors' published
NumPy code (LogME's SVD, H-Score's ``pinv``, TransRate's per-class ``slogdet``, GBC's loop
over class pairs, PACTran's L-BFGS-B, ...) one model at a time, in loops: the reference
point, not a tuned rewrite. They are not imported by :mod:`fennec_jax.estimators`; import
this module explicitly (it loads SciPy and scikit-learn).

Inputs, for every function: ``f`` is ``features[N, D]`` float64 (one model's features on
the task's N examples), ``p`` is ``probs[N, Cs]`` float64 (its source-head probabilities,
rows summing to 1), ``y`` is ``labels[N]`` int in ``[0, C)``. Every function returns one
float (higher = better, PACTran's sign flipped as in the JAX estimators), except the
``*_components`` functions of the candidate-normalised estimators, which return the
per-model components that :data:`COMBINE` turns into ``scores[M]`` over a candidate set.

:data:`REFERENCES` maps each registered estimator name to its reference, called as
``REFERENCES[name](f_or_p, y)`` (probabilities for the estimators with ``needs_probs``).
"""

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.special
import scipy.stats
import sklearn.decomposition
import sklearn.preprocessing

__all__ = [
    "COMBINE", "REFERENCES", "etran_components", "gbc", "gbc_diagonal", "hscore",
    "hscore_reg", "leep", "logme", "logme_full_spectrum", "ncti_components", "nce", "nleep",
    "pactran_dir", "pactran_gauss", "parc", "sfda", "transrate",
]


# ------------------------------------------------------------------------------ LogME

def _logme_evidence(sigma, p2, yy, n, d):
    """LogME's fixed point for one target ``y[N]``: ``sigma[k]`` eigenvalues of FᵀF,
    ``p2[k]`` squared projections of Fᵀy on their eigenvectors, ``yy = |y|²``; returns the
    evidence per sample. ``|y - F m|² = yy - sum(p2 (sigma + 2t) / (t + sigma)²)``, which is
    the published ``sum(x2 / (1 + sigma / t)²) + res_x2`` with ``x2 = p2 / sigma``."""
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        gamma = np.sum(sigma / (sigma + t))
        m2 = np.sum(p2 / (t + sigma) ** 2)
        res2 = yy - np.sum(p2 * (sigma + 2 * t) / (t + sigma) ** 2)
        alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2 * res2
            - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n


def logme(f, y):
    """thuml/LogME ``_fit_fixed_point``: SVD of FᵀF (N > D) or of F, keeping the nonzero
    singular values only (so with N < D it leaves out the D - N zero eigenvalues' log-alpha
    terms; see :func:`logme_full_spectrum`). Mean evidence over the classes 0 .. max(y)."""
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
        evidences.append(_logme_evidence(sigma, sigma * (u.T @ y_) ** 2, y_ @ y_, n, d))
    return np.mean(evidences)


def logme_full_spectrum(f, y):
    """LogME's fixed point from the full D x D eigen-decomposition of FᵀF (all D
    eigenvalues, zeros included), what the JAX estimator computes: unlike the published
    :func:`logme`, it does not move when zero columns are appended. Mean evidence over the
    classes present in ``y``."""
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.maximum(s, 0)
    evidences = []
    for c in np.unique(y):
        y_ = (y == c).astype(float)
        evidences.append(_logme_evidence(s, (v.T @ (f.T @ y_)) ** 2, y_ @ y_, n, d))
    return np.mean(evidences)


# ------------------------------------------------------------------- LEEP, NCE, NLEEP

def leep(p, y):
    """LEEP (Nguyen et al. 2020): mean log of the expected empirical prediction."""
    n = len(y)
    joint = np.stack([p[y == c].sum(0) for c in range(y.max() + 1)]) / n
    marginal = joint.sum(0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    return np.mean(np.log((p @ conditional.T)[np.arange(n), y]))


def nce(p, y):
    """NCE (Tran et al. 2019): negative conditional entropy H(y | argmax p); rows with tied
    maxima count for their first maximal source class (``argmax``)."""
    z = p.argmax(1)
    joint = np.zeros((y.max() + 1, p.shape[1]))
    np.add.at(joint, (y, z), 1.0 / len(y))
    p_z = joint.sum(0)
    seen = p_z > 0
    conditional = joint[:, seen] / p_z[seen] + 1e-20
    return -np.sum(p_z[seen] * -np.sum(conditional * np.log(conditional), 0))


def nleep(f, y, seed=0):
    """NLEEP (Li et al. 2021): PCA (80% variance) + scikit-learn-style k-means++ / EM
    full-covariance mixture with 5C components, then :func:`leep` of its posteriors.
    Stochastic: another ``seed`` (or the JAX estimator's) gives a nearby value."""
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
    return leep(posteriors, y)


# ----------------------------------------------------------------- H-Score, TransRate

def _class_mean_rows(f, y):
    """``[N, D]``: each row replaced by the mean of its class's rows."""
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return g


def hscore(f, y, rcond=1e-15):
    """The authors' ``getHscore``: ``trace(pinv(cov(f), rcond) cov(g))`` with ``g`` the
    class-mean rows. The JAX estimator's pseudo-inverse uses the ``matrix_rank`` rule,
    ``rcond = max(N, D) * eps``."""
    covf = np.cov(f, rowvar=False)
    covg = np.cov(_class_mean_rows(f, y), rowvar=False)
    return np.trace(np.linalg.pinv(covf, rcond=rcond) @ covg)


def hscore_reg(f, y):
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


def transrate(f, y):
    """TransRate (Huang et al. 2022): ``R(Z) - mean_c R(Z_c)``, per-class ``slogdet``."""
    z = f - f.mean(0)
    k = y.max() + 1
    return _coding_rate(z) - sum(_coding_rate(z[y == c]) for c in range(k)) / k


# ------------------------------------------------------------------------- GBC, PARC

def _gbc(f, y, spherical):
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


def gbc(f, y):
    """GBC (Pándy et al. 2022), spherical Gaussians."""
    return _gbc(f, y, True)


def gbc_diagonal(f, y):
    """GBC (Pándy et al. 2022), diagonal Gaussians."""
    return _gbc(f, y, False)


def parc(f, y, pca_dims=None):
    """The authors' PARC (dbolya/parc ``methods.PARC`` with ``feature_reduce``): with
    ``pca_dims``, scikit-learn's randomised PCA to ``min(pca_dims, N)`` components
    (random_state 1919, one power iteration); StandardScaler; RDMs ``1 - np.corrcoef`` of
    the feature rows and of the one-hot label rows; 100 x SciPy's Spearman of their upper
    triangles."""
    if pca_dims is not None:
        f = sklearn.decomposition.PCA(
            n_components=min(pca_dims, f.shape[0]), svd_solver="randomized",
            random_state=1919, iterated_power=1).fit_transform(f)
    z = sklearn.preprocessing.StandardScaler().fit_transform(f)
    onehot = np.eye(int(y.max()) + 1)[y]
    upper = np.triu_indices(len(y), 1)
    return 100 * scipy.stats.spearmanr((1 - np.corrcoef(z))[upper],
                                       (1 - np.corrcoef(onehot))[upper])[0]


# ------------------------------------------------------------------------------- SFDA

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


def sfda(f, y):
    """TencentARC/SFDA ``SFDA_Score``: two rounds of the regularised FDA posteriors, the
    second on confidence-mixed features."""
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


# ----------------------------------------------------- NCTI and ETran (per-model parts)

def _nuclear(a):
    return np.linalg.svd(a, compute_uv=False).sum()


def ncti_components(f, y):
    """BUserName/NCTI ``NCTI_Score`` with exact PCA and scikit-learn's LDA solvers:
    ``[seli, ncc, vc]`` of one model (combined over the candidates by ``COMBINE["ncti"]``)."""
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


def etran_components(f, y):
    """mgholamikn/ETran: ``[energy, lda]`` of one model (combined over the candidates by
    ``COMBINE["etran"]``); energy = mean of the ``max(1, 5 N // 1000)`` lowest
    ``logsumexp_d f_id``."""
    energy = scipy.special.logsumexp(f, axis=-1)
    energy = np.sort(energy)[: max(1, 5 * len(energy) // 1000)].mean()
    classes, yi = np.unique(y, return_inverse=True)
    priors = np.bincount(yi) / len(y)
    means = np.stack([f[yi == k].mean(0) for k in range(len(classes))])
    logits = f @ means.T - 0.5 * (means ** 2).sum(1) + np.log(priors)
    return np.array([energy,
                     scipy.special.softmax(logits, 1)[np.arange(len(y)), yi].mean()])


def _minmax(v):
    return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)


# ---------------------------------------------------------------------------- PACTran

def pactran_gauss(f, y):
    """google-research ``calculate_pac_gauss`` (features centred, lda_factor 1, s2 100/D),
    sign flipped (higher = better)."""
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


def pactran_dir(p, y):
    """google-research ``calculate_pac_dir`` (10 variational updates), sign flipped
    (higher = better)."""
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


# --------------------------------------------------------------------------- registry

REFERENCES = {
    "logme": logme, "leep": leep, "nce": nce, "hscore": hscore,
    "hscore_reg": hscore_reg, "nleep": nleep, "transrate": transrate,
    "gbc": gbc, "gbc_diagonal": gbc_diagonal, "parc": parc, "sfda": sfda,
    "ncti": ncti_components, "etran": etran_components,
    "pactran_gauss": pactran_gauss, "pactran_dir": pactran_dir,
}
"""Estimator name -> its reference ``(f or p, y) -> float`` (``-> components[K]`` for the
candidate-normalised ``ncti`` and ``etran``)."""

COMBINE = {
    "ncti": lambda c: _minmax(c[:, 1]) + _minmax(c[:, 0]) - _minmax(c[:, 2]),
    "etran": lambda c: 0.15 * _minmax(c[:, 0]) + 0.85 * _minmax(c[:, 1]),
}
"""The candidate-normalised estimators: ``components[M, K]`` (the references' outputs
stacked over the M candidates) -> ``scores[M]``."""
