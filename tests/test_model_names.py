"""Model side information from names (fennec_jax.core.model_names), checked on the real names
of the bundled benchmarks: specific parses, and coverage / agreement with the metadata the
data carries (timm's family column, model_recycling's model_type and base model)."""

import csv
import importlib.resources
import re

import numpy as np
import pytest

from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.core.model_names import FIELDS, ModelName, attach_name_metadata, name_metadata, parse_model_name
from fennec_jax.core.records import records_from_matrix


def _csv(relpath):
    ref = importlib.resources.files("fennec_jax").joinpath("bundled", relpath)
    with ref.open("r", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name, expected", [
    # The examples.
    ("google/vit-base-patch16-224-in21k",
     dict(org="google", family="vit", size="base", patch="16", resolution="224", pretrain_data="in21k")),
    ("resnet50.a1_in1k", dict(family="resnet", variant="50", pretrain_data="in1k")),
    ("bert-base-uncased", dict(family="bert", size="base", casing="uncased")),
    ("org/model-name", dict(org="org")),
    # Real timm ids (fennec_jax/bundled/timm).
    ("vit_base_patch16_clip_384.laion2b_ft_in12k_in1k",
     dict(family="vit", size="base", patch="16", resolution="384", pretrain_data="laion2b")),
    ("convnextv2_huge.fcmae_ft_in22k_in1k_384",
     dict(family="convnext", variant="v2", size="huge", resolution="384", pretrain_data="in22k")),
    ("tf_efficientnet_b6.ns_jft_in1k", dict(family="efficientnet", variant="b6", pretrain_data="jft")),
    ("regnety_160.pycls_in1k", dict(family="regnety", variant="160", pretrain_data="in1k")),  # 160: a variant
    ("xcit_small_12_p16_224.fb_in1k", dict(family="xcit", size="small", patch="16", resolution="224",
                                           pretrain_data="in1k")),
    ("mobilenetv4_conv_large.e600_r384_in1k", dict(family="mobilenet", variant="v4", size="large",
                                                   resolution="384", pretrain_data="in1k")),
    ("res2net50_14w_8s.in1k", dict(family="res2net", variant="50", pretrain_data="in1k")),
    ("wide_resnet50_2.racm_in1k", dict(family="wide_resnet", variant="50", pretrain_data="in1k")),
    # Real model_recycling ids.
    ("pritamdeka/BioBERT-mnli-snli-scinli-scitail-mednli-stsb", dict(org="pritamdeka", family="bert")),
    ("Gaborandi/Bio_ClinicalBERT-Cardiology", dict(org="Gaborandi", family="bert")),  # not albert
    ("relbert/relbert-roberta-base-semeval2012-v6-average-prompt-b-loob-2-child",
     dict(org="relbert", family="roberta", size="base")),  # a whole-word family first
    ("ibm/ColD-Fusion-itr13-seed2", dict(org="ibm")),
    ("SampsonChris/Analysis_on_socialmedia_sentiment_on_vaccines", dict(org="SampsonChris")),  # no 'sam'
    ("seongwoon/bert_labor_space_token_512_batch_8_5e-05_not_firm", dict(org="seongwoon", family="bert")),
    ("nyu-mll/roberta-base-1B-1", dict(org="nyu-mll", family="roberta", size="base")),  # 1B: words, not params
    # Real PARC / Model Spider names.
    ("resnet50/jigsaw_imagenet22k", dict(org="resnet50", family="resnet", variant="50", pretrain_data="in22k")),
    ("FTD_densenet201_AID", dict(family="densenet", variant="201")),
    ("inception_v3", dict(family="inception", variant="v3")),
    ("", {}),
])
def test_parses_real_names(name, expected):
    assert parse_model_name(name) == ModelName(**expected)


def test_timm_names_agree_with_timm_metadata():
    rows = _csv("timm/timm_model_metadata.csv")
    parsed = [parse_model_name(r["model"]) for r in rows]
    assert len(rows) == 1267 and all(p.family for p in parsed)
    # timm's own family column, less its port prefixes and version suffixes.
    theirs = [re.sub(r"v\d+$", "", re.sub(r"^(tf|legacy|gluon|dm)_", "", r["family"])) for r in rows]
    agree = np.mean([p.family == t for p, t in zip(parsed, theirs)])
    assert agree == pytest.approx(0.9905, abs=1e-4)  # the 12 others: timm says 'dm' (nfnet), 'wide' (wide_resnet)
    # A resolution is read from 37 % of the ids; 91 % equal timm's evaluation size (the rest
    # were evaluated above their training resolution).
    with_res = [(p.resolution, r["img_size"]) for p, r in zip(parsed, rows) if p.resolution]
    assert len(with_res) == 474 and np.mean([a == b for a, b in with_res]) == pytest.approx(0.9093, abs=1e-4)
    assert np.mean([p.pretrain_data != "" for p in parsed]) == pytest.approx(1266 / 1267)


def test_model_recycling_names_agree_with_model_type():
    rows = _csv("model_recycling/models.csv")
    parsed = [parse_model_name(r["model"]) for r in rows]
    assert np.mean([p.family != "" for p in parsed]) == pytest.approx(1713 / 2175)
    # Where a name says bert or roberta, it matches the checkpoint's model_type 97 % of the time;
    # the rest are names that mislead (relabelled forks, 'bertin' / 'robBERT' RoBERTa models).
    said = [(p.family, r["model_type"]) for p, r in zip(parsed, rows) if p.family in ("bert", "roberta")]
    assert len(said) == 1697 and np.mean([a == b for a, b in said]) == pytest.approx(0.9741, abs=1e-4)
    # Casing is read from 236 names and matches the base model's for the bert-based ones.
    cased = [(p.casing, r["base_model"]) for p, r in zip(parsed, rows) if p.casing]
    bert = [(c, b) for c, b in cased if b.startswith("bert")]
    assert len(cased) == 236 and np.mean([b == f"bert-base-{c}" for c, b in bert]) == pytest.approx(224 / 225)


def test_parc_and_spider_names_give_the_architecture():
    for name in ("parc_all", "spider_multi"):
        records = load_benchmark(name).records
        meta = name_metadata(records.models)
        archs = records.model_meta["family"]
        assert all(str(a).startswith(f) for a, f in zip(archs, meta["family"])), name


def test_name_metadata_columns():
    meta = name_metadata(["google/vit-base-patch16-224-in21k", "bert-base-cased", "mystery"])
    assert set(meta) == set(FIELDS) - {"variant"}  # columns nobody fills are left out
    assert meta["family"].tolist() == ["vit", "bert", ""] and meta["casing"].tolist() == ["", "cased", ""]
    assert all(col.dtype == object and col.shape == (3,) for col in meta.values())


def test_attach_name_metadata_fills_gaps_only():
    models = ["resnet50.a1_in1k", "vit_base_patch16_224.augreg_in21k"]
    bare = records_from_matrix(models, ["t"], np.ones((1, 2)))
    attached = attach_name_metadata(bare)
    assert attached.model_meta["family"].tolist() == ["resnet", "vit"]
    assert attached.model_meta["pretrain_data"].tolist() == ["in1k", "in21k"]
    given = records_from_matrix(models, ["t"], np.ones((1, 2)),
                                model_meta={"family": np.array(["cnn", "transformer"], dtype=object)})
    kept = attach_name_metadata(given)
    assert kept.model_meta["family"].tolist() == ["cnn", "transformer"]  # never replaced
    assert kept.model_meta["patch"].tolist() == ["", "16"]
