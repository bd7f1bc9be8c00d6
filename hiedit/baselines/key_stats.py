"""The key statistic of MEMIT and AlphaEdit: ``C = E[k kᵀ]`` of each edited module's input.

``k`` is the input of an MLP down-projection at one token position; ``C`` is the mean of
``k kᵀ`` over every non-padding position (BOS included) of a sample of generic text, the second
moment and not a covariance: the mean is not subtracted. This is what MEMIT's
``rome/layer_stats.py`` computes (its ``SecondMoment`` statistic over
``flatten_masked_batch``, i.e. with padding excluded). Facts of that code kept here: each sample
is one document cut to the model's context length (``max_length``), documents are a seeded
random subset (``sample_seed`` 1, ``n_samples`` 100,000 Wikipedia articles in the public
configurations). The sums are accumulated and the statistic stored in fp64, where MEMIT uses
fp32: the keys at a text's first position are orders of magnitude larger than the others
(norm 2700 against about 5 at layer 11 of SmolLM2-135M, whose statistic then has a largest
eigenvalue of 2e5 and a median one of 1e-2), and fp32 rounding at that scale is as large as the
small eigenvalues AlphaEdit's null space is made of.

Text sources (``baselines.key_stats.source``):

* ``wikipedia``: a Hugging Face dataset through ``datasets`` (``hub_dataset``/``hub_config``;
  MEMIT's ``wikipedia``/``20220301.en`` is a script dataset that current ``datasets`` releases no
  longer load, so the default is its parquet successor ``wikimedia/wikipedia``/``20231101.en``).
  Needs the hub.
* ``pydoc-topics``: the documentation text that ships inside every CPython, the
  ``pydoc_data.topics`` module (about 65k words of English; PSF licence). It runs offline; its
  text changes with the Python version, which is recorded. Documents are its paragraphs
  (blank-line separated, those without a letter dropped), each short enough never to be cut.

Next to the tensor file a JSON sidecar records the source (name, version), the number of
documents and of tokens, the sha256 of the text, the modules and the sha256 of the tensor file;
:func:`load_key_stats` refuses a tensor file that does not match its sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiedit.baselines.locate import read_section, setting
from hiedit.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

KIND = "hiedit-key-stats"
VERSION = 1
SOURCES = ("wikipedia", "pydoc-topics")


@dataclass(frozen=True)
class KeyStatsConfig:
    """``baselines.key_stats``: where the text comes from and how much of it (module docstring)."""

    source: str = setting("wikipedia", kind=str, choices=SOURCES)
    hub_dataset: str = setting("wikimedia/wikipedia", kind=str)
    hub_config: str = setting("20231101.en", kind=str)
    n_samples: int = setting(100000, kind=int, ge=0)  # 0: every document of the source
    max_length: int = setting(8192, kind=int, ge=2)
    batch_tokens: int = setting(8192, kind=int, ge=1)
    sample_seed: int = setting(1, kind=int, ge=0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "baselines.key_stats"):
        return read_section(cls, values, where)


@dataclass
class TextSample:
    """The documents a statistic is fitted on, and where they came from."""

    source: str
    version: str
    documents: list[str]
    origin: dict[str, Any]

    def sha256(self) -> str:
        """sha256 over the documents in order, each as UTF-8 followed by one NUL byte."""
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass
class KeyStats:
    """Fitted second moments (module name -> d_in × d_in fp64) and their provenance."""

    second_moments: dict[str, torch.Tensor]
    info: dict[str, Any]
    sha256: str = ""
    path: str = ""

    def describe(self) -> str:
        return self.path or f"key statistic {self.sha256[:12]}"


def pydoc_documents() -> list[str]:
    """Paragraphs of ``pydoc_data.topics`` in topic order, those with at least one letter."""
    from pydoc_data import topics

    docs = []
    for name in sorted(topics.topics):
        for paragraph in topics.topics[name].split("\n\n"):
            text = paragraph.strip()
            if any(ch.isalpha() for ch in text):
                docs.append(text)
    return docs


def _subset(n_total: int, n_samples: int, seed: int) -> list[int]:
    import numpy as np

    if n_samples == 0 or n_samples >= n_total:
        return list(range(n_total))
    picked = np.random.default_rng(seed).choice(n_total, size=n_samples, replace=False)
    return sorted(int(i) for i in picked)


def load_text(cfg: KeyStatsConfig) -> TextSample:
    """The documents of ``cfg.source`` (a seeded subset of ``n_samples`` of them)."""
    if cfg.source == "pydoc-topics":
        docs = pydoc_documents()
        chosen = _subset(len(docs), cfg.n_samples, cfg.sample_seed)
        return TextSample(
            "pydoc-topics",
            f"python {platform.python_version()}",
            [docs[i] for i in chosen],
            {"module": "pydoc_data.topics", "documents_available": len(docs)},
        )
    if cfg.source == "wikipedia":
        try:
            import datasets
        except ImportError as err:
            raise ConfigError(
                "baselines.key_stats.source: 'wikipedia' needs the `datasets` package"
            ) from err
        data = datasets.load_dataset(cfg.hub_dataset, cfg.hub_config, split="train")
        chosen = _subset(len(data), cfg.n_samples, cfg.sample_seed)
        texts = data.select(chosen)["text"]
        return TextSample(
            "wikipedia",
            f"{cfg.hub_dataset}/{cfg.hub_config}, datasets {datasets.__version__}",
            [str(t) for t in texts],
            {
                "hub_dataset": cfg.hub_dataset,
                "hub_config": cfg.hub_config,
                "documents_available": len(data),
                "fingerprint": getattr(data, "_fingerprint", None),
            },
        )
    raise ConfigError(f"baselines.key_stats.source: unknown source {cfg.source!r}")


def _batches(rows: Sequence[list[int]], batch_tokens: int) -> Iterator[list[list[int]]]:
    """Consecutive groups whose padded size (rows × longest) stays within ``batch_tokens``."""
    group: list[list[int]] = []
    longest = 0
    for row in rows:
        wider = max(longest, len(row))
        if group and wider * (len(group) + 1) > batch_tokens:
            yield group
            group, wider = [], len(row)
        group.append(row)
        longest = wider
    if group:
        yield group


def _token_batches(
    tokenizer, documents: Sequence[str], limit: int, batch_tokens: int, chunk: int = 256
) -> Iterator[list[list[int]]]:
    """Batches of token rows, tokenising a few hundred documents at a time."""
    for start in range(0, len(documents), chunk):
        encoded = tokenizer(list(documents[start : start + chunk]), add_special_tokens=True)
        yield from _batches([list(ids)[:limit] for ids in encoded["input_ids"]], batch_tokens)


class _Stop(Exception):
    pass


def fit_second_moments(
    model,
    tokenizer,
    module_names: Sequence[str],
    documents: Sequence[str],
    *,
    max_length: int,
    batch_tokens: int,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """``E[k kᵀ]`` of each module's input over the documents' tokens; returns (moments, tokens).

    Every document is tokenised with the tokenizer's special tokens and cut to ``max_length``
    tokens (and to the model's ``max_position_embeddings``); padding positions are excluded.
    The forward stops once every module has seen its batch.
    """
    import torch
    from tqdm.auto import tqdm

    from hiedit.baselines.locate import pad_rows

    if not documents:
        raise ConfigError("baselines.key_stats: no text to fit the key statistic on")
    limit = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    available = dict(model.named_modules())
    missing = [name for name in module_names if name not in available]
    if missing:
        raise ConfigError(f"baselines.key_stats: modules not in the model: {', '.join(missing)}")
    modules = [available[name] for name in module_names]
    device = next(model.parameters()).device
    sums = [
        torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=device)
        for m in modules
    ]
    count = 0
    current: dict[str, torch.Tensor] = {}
    fired: set[int] = set()

    def make_hook(index: int):
        def hook(module, args):
            keys = args[0][current["mask"]].to(torch.float64)
            sums[index].addmm_(keys.T, keys)
            fired.add(index)
            if len(fired) == len(modules):
                raise _Stop

        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(modules)]
    bar = tqdm(total=len(documents), desc="key statistic", unit="doc", disable=not progress)
    try:
        with torch.no_grad():
            for group in _token_batches(tokenizer, documents, limit, batch_tokens):
                input_ids, attention_mask = pad_rows(tokenizer, group, device)
                current["mask"] = attention_mask.bool()
                fired.clear()
                try:
                    model.get_decoder()(
                        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                    )
                except _Stop:
                    pass
                if len(fired) != len(modules):
                    raise ConfigError("baselines.key_stats: a module was not called in the forward")
                count += int(attention_mask.sum())
                bar.update(len(group))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    moments = {name: (total / count).cpu() for name, total in zip(module_names, sums, strict=True)}
    return moments, count


def _file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``stats.pt`` -> ``stats.json``."""
    return Path(path).with_suffix(".json")


def fit_key_stats(
    model,
    tokenizer,
    module_names: Sequence[str],
    cfg: KeyStatsConfig,
    *,
    model_name: str = "",
    text: TextSample | None = None,
    progress: bool = False,
) -> KeyStats:
    """Fit the statistic of ``module_names`` on ``cfg``'s text (or on ``text`` if given)."""
    text = text or load_text(cfg)
    moments, tokens = fit_second_moments(
        model,
        tokenizer,
        module_names,
        text.documents,
        max_length=cfg.max_length,
        batch_tokens=cfg.batch_tokens,
        progress=progress,
    )
    info = {
        "kind": KIND,
        "version": VERSION,
        "statistic": "mean of k kᵀ over non-padding tokens (inputs of each module)",
        "model": model_name,
        "modules": {name: list(m.shape) for name, m in moments.items()},
        "dtype": "float64",
        "source": {"name": text.source, "version": text.version, **text.origin},
        "documents": len(text.documents),
        "tokens": tokens,
        "text_sha256": text.sha256(),
        "settings": {
            "n_samples": cfg.n_samples,
            "max_length": cfg.max_length,
            "batch_tokens": cfg.batch_tokens,
            "sample_seed": cfg.sample_seed,
        },
    }
    log.info(
        "key statistic of %d modules from %s (%s): %d documents, %d tokens",
        len(moments),
        text.source,
        text.version,
        len(text.documents),
        tokens,
    )
    return KeyStats(moments, info)


def save_key_stats(stats: KeyStats, path: str | os.PathLike[str]) -> Path:
    """Write the tensor file and its JSON sidecar (each atomically); sets ``stats.sha256``."""
    import torch

    from hiedit.atomic import atomic_path, write_json

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"kind": KIND, "version": VERSION, "second_moments": stats.second_moments}, tmp)
    stats.sha256 = _file_sha256(path)
    stats.path = str(path)
    write_json(sidecar_path(path), {**stats.info, "tensor_file": path.name, "sha256": stats.sha256})
    return path


def load_key_stats(path: str | os.PathLike[str]) -> KeyStats:
    """Read a statistic written by :func:`save_key_stats`, checking it against its sidecar."""
    import torch

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: key statistic not found (python -m hiedit baselines fit-stats)")
    if not side.is_file():
        raise ConfigError(f"{path}: its sidecar {side.name} is missing")
    info = json.loads(side.read_text())
    digest = _file_sha256(path)
    if info.get("sha256") != digest:
        raise ConfigError(
            f"{path}: sha256 {digest} does not match its sidecar's {info.get('sha256')}"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("kind") != KIND or data.get("version") != VERSION:
        raise ConfigError(f"{path}: not a key statistic file of version {VERSION}")
    return KeyStats(dict(data["second_moments"]), info, digest, str(path))
