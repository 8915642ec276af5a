"""Model side information read from model names, for records that come without metadata.

Hugging Face ids (``org/name``, or a bare ``bert-base-uncased``) and timm ids
(``arch.pretrained_tag``, e.g. ``vit_base_patch16_224.augreg_in21k_ft_in1k``) carry some of
what a metadata file would say. :func:`parse_model_name` reads what is reliably there;
:func:`name_metadata` gives it as model metadata columns, and :func:`attach_name_metadata`
adds those columns to records that lack them.

Every field is a string, ``''`` when the name does not say:

* ``org``: the part before the first ``/`` (the Hugging Face organisation or user).
* ``family``: the architecture family, lowercase. A timm id's first architecture token
  stripped of its trailing variant (``convnextv2_huge`` -> ``convnext``, ``res2net50_14w_8s``
  -> ``res2net``, ``wide_resnet50_2`` -> ``wide_resnet``), after a port prefix (``tf_``,
  ``tv_``, ``legacy_``, ``gluon_``, ``dm_``); in any other name the first token that is a
  known family (:data:`FAMILIES`), possibly with a variant glued on (``resnet50``), else the
  first token that starts or ends with a distinctive one (``BioBERT`` -> ``bert``), looked for
  in the part after ``/`` first, then in the organisation.
* ``variant``: what follows the family inside its token (``resnet50`` -> ``50``,
  ``convnextv2`` -> ``v2``), or the next token when it is ``v<n>`` / ``b<n>`` (``inception_v3``,
  ``efficientnet_b3``), a timm id's next token when numeric (``regnety_160``), or a vision
  family's next token when numeric (``resnet-50``).
* ``size``: a size word token (:data:`SIZE_WORDS`: tiny, small, base, large, ...).
* ``patch``: the patch size of ``patch16`` tokens (and of ``p16`` in timm ids).
* ``resolution``: the input resolution: in a timm id a resolution-like number
  (:data:`RESOLUTIONS`) or ``r<n>`` in the tag, else the arch's last such number when it
  does not directly follow the family (``regnety_160`` is a variant); in any other name only
  the number right after a patch token (``vit-base-patch16-224``), since free-form names use
  numbers for sequence lengths and batch sizes.
* ``pretrain_data``: the first pre-training data tag (:data:`DATA_TAGS`, ``imagenet`` ->
  ``in1k``, ``imagenet21k`` -> ``in21k``): in ``in22k_ft_in1k`` the pre-training data is
  ``in22k``.
* ``casing``: ``cased`` or ``uncased``.

Not parsed: parameter counts. Tokens like ``124m`` or ``1B`` in the bundled Hugging Face names
are pre-training corpus sizes (``nyu-mll/roberta-base-1B-1``: 1 B words; every such name in
model_recycling is a ~125 M-parameter model), so reading them as sizes would mislead.
Names can also simply be wrong (a roberta-base checkpoint named ``DistilBERTFINAL_...``);
``tests/test_model_names.py`` measures coverage and agreement on the bundled names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["ModelName", "parse_model_name", "name_metadata", "attach_name_metadata", "FIELDS", "FAMILIES",
           "SIZE_WORDS", "DATA_TAGS", "RESOLUTIONS"]

FIELDS = ("org", "family", "variant", "size", "patch", "resolution", "pretrain_data", "casing")

VISION_FAMILIES = (
    "alexnet", "vgg", "googlenet", "inception", "resnet", "resnext", "wide_resnet", "densenet", "mobilenet",
    "mnasnet", "shufflenet", "squeezenet", "efficientnet", "regnet", "convnext", "vit", "deit", "beit", "swin",
    "dino", "dinov2", "clip", "siglip", "eva", "levit", "xcit", "cait", "mobilevit", "yolos", "detr", "sam",
)
TEXT_FAMILIES = (
    "bert", "roberta", "distilbert", "distilroberta", "albert", "deberta", "electra", "xlnet", "xlm", "camembert",
    "ernie", "mpnet", "minilm", "longformer", "bigbird", "funnel", "gpt", "gpt2", "gptj", "gpt_neo", "opt", "bloom",
    "llama", "mistral", "t5", "bart", "mbart", "pegasus",
)
FAMILIES = VISION_FAMILIES + TEXT_FAMILIES
SIZE_WORDS = ("atto", "femto", "pico", "nano", "tiny", "mini", "small", "medium", "base", "large", "xlarge",
              "xxlarge", "huge", "giant", "gigantic", "xl", "xxl")
DATA_TAGS = {
    "in1k": "in1k", "imagenet": "in1k", "imagenet1k": "in1k", "in12k": "in12k", "in21k": "in21k",
    "imagenet21k": "in21k", "in22k": "in22k", "imagenet22k": "in22k", "jft": "jft", "jft300m": "jft300m",
    "laion2b": "laion2b", "laion400m": "laion400m", "openai": "openai", "yfcc100m": "yfcc100m", "ig1b": "ig1b",
    "ig3b": "ig3b", "instagram": "instagram", "merged2b": "merged2b", "dfn2b": "dfn2b", "datacompxl": "datacompxl",
    "webli": "webli", "places205": "places205",
}
RESOLUTIONS = frozenset({96, 112, 128, 160, 176, 192, 208, 224, 240, 256, 260, 288, 299, 300, 320, 336, 380, 384,
                         448, 456, 512, 528, 576, 600, 640})
_PORT_PREFIXES = frozenset({"tf", "tv", "legacy", "gluon", "dm"})
_TIMM_ID = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
# A timm architecture token: family (ends in a letter) + optional variant (v2, 50, 50d, 2d, 02).
_TIMM_TOKEN = re.compile(r"^([a-z][a-z0-9]*?[a-z])(v?\d+[a-z]?)?$")
_NEXT_VARIANT = re.compile(r"^[vb]\d+$")
_VARIANT = re.compile(r"v?\d+[a-z]?")
# Families distinctive enough to find inside a longer token (BioBERT, twitterroberta).
_LOOSE = tuple(f for f in FAMILIES if len(f) >= 6) + ("bert",)


@dataclasses.dataclass(frozen=True)
class ModelName:
    """What one model name says (module docstring); every field ``''`` when unknown."""

    org: str = ""
    family: str = ""
    variant: str = ""
    size: str = ""
    patch: str = ""
    resolution: str = ""
    pretrain_data: str = ""
    casing: str = ""


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[-_.\s]+", text.lower()) if t]


def _resolution(token: str) -> str:
    return token if token.isdigit() and int(token) in RESOLUTIONS else ""


def _timm_family(tokens: list[str]) -> tuple[str, str, int]:
    """``(family, variant, index of the family token)`` of a timm architecture's tokens."""
    i = next((j for j, t in enumerate(tokens) if t not in _PORT_PREFIXES), len(tokens))
    wide = i + 1 < len(tokens) and tokens[i] == "wide"  # wide_resnet50_2
    match = _TIMM_TOKEN.match(tokens[i + wide]) if i + wide < len(tokens) else None
    if match is None:
        return "", "", i
    i += wide
    variant = match.group(2) or ""
    if not variant and i + 1 < len(tokens) and (tokens[i + 1].isdigit() or _NEXT_VARIANT.match(tokens[i + 1])):
        variant = tokens[i + 1]
    return "wide_" * wide + match.group(1), variant, i


def _known_family(tokens: list[str]) -> tuple[str, str]:
    """``(family, variant)`` from free-form name tokens: the first token that is a known family,
    optionally with a variant glued on (``resnet50``, ``vgg16``); failing that, the first token
    that starts with (longest) or ends with (shortest) a distinctive family (:data:`_LOOSE`:
    ``biobert`` and ``clinicalbert`` -> ``bert``, not ``albert``). Short families (``t5``,
    ``sam``, ``eva``) never match inside a longer word (``sample``, ``eval``)."""
    for i, token in enumerate(tokens):
        for family in sorted(FAMILIES, key=len, reverse=True):
            rest = token[len(family):]
            if token.startswith(family) and (not rest or _VARIANT.fullmatch(rest)):
                return family, rest or _next_variant(family, tokens[i + 1:])
    for i, token in enumerate(tokens):
        prefix = [f for f in _LOOSE if token.startswith(f)]
        suffix = [f for f in _LOOSE if token.endswith(f)]
        if prefix or suffix:
            return (max(prefix, key=len) if prefix else min(suffix, key=len)), ""
    return "", ""


def _next_variant(family: str, following: list[str]) -> str:
    """The token after a family token when it is a variant: ``v3`` / ``b3`` always, a plain
    number after a vision family (``resnet-50``; after a text family it is rarely one)."""
    nxt = following[0] if following else ""
    return nxt if _NEXT_VARIANT.match(nxt) or (family in VISION_FAMILIES and nxt.isdigit()) else ""


def parse_model_name(name: str) -> ModelName:
    """What ``name`` (a Hugging Face or timm id, or any model name) reliably says
    (module docstring). Never raises; an unparseable name gives an empty :class:`ModelName`."""
    org, _, rest = name.partition("/") if "/" in name else ("", "", name)
    timm = not org and bool(_TIMM_ID.match(rest))
    arch, _, tag = rest.partition(".") if timm else (rest, "", "")
    arch_tokens, tag_tokens = _tokens(arch), _tokens(tag)
    tokens = arch_tokens + tag_tokens
    patch, resolution = "", ""
    for i, token in enumerate(arch_tokens):
        m = re.fullmatch(r"patch(\d+)", token) or (re.fullmatch(r"p(\d+)", token) if timm else None)
        if m and not patch:
            patch = m.group(1)
            if not timm and i + 1 < len(arch_tokens):
                resolution = _resolution(arch_tokens[i + 1])
    if timm:
        family, variant, at = _timm_family(arch_tokens)
        from_tag = [_resolution(t.removeprefix("r")) for t in tag_tokens if _resolution(t.removeprefix("r"))]
        from_arch = [_resolution(t) for t in arch_tokens[at + 2:] if _resolution(t)]
        resolution = (from_tag or from_arch or [""])[-1]
    else:
        family, variant = _known_family(_tokens(rest))
        if not family and org:
            family, variant = _known_family(_tokens(org))
    data = next((DATA_TAGS[t] for t in tokens if t in DATA_TAGS), "")
    return ModelName(
        org=org,
        family=family,
        variant=variant,
        size=next((t for t in tokens if t in SIZE_WORDS), ""),
        patch=patch,
        resolution=resolution,
        pretrain_data=data,
        casing=next((t for t in tokens if t in ("cased", "uncased")), ""),
    )


def name_metadata(models: Sequence[str]) -> dict[str, np.ndarray]:
    """Model metadata columns parsed from the names ``models[M]``: ``{field: values[M]}``
    (object arrays of str, ``''`` where unknown) for each of :data:`FIELDS` that at least one
    name gives; usable wherever model metadata goes (``Records.model_meta``)."""
    parsed = [parse_model_name(str(m)) for m in models]
    columns = {f: np.array([getattr(p, f) for p in parsed], dtype=object) for f in FIELDS}
    return {f: col for f, col in columns.items() if np.any(col != "")}


def attach_name_metadata(records):
    """``records`` (a :class:`~fennec_jax.core.records.Records`) with the columns of
    :func:`name_metadata` added where it lacks them: a column the records already carry (from
    a metadata file or a loader) is never replaced, so names only fill gaps."""
    parsed = name_metadata(records.models)
    added = {f: col for f, col in parsed.items() if f not in records.model_meta}
    return dataclasses.replace(records, model_meta={**records.model_meta, **added}) if added else records
