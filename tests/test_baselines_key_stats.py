"""The key statistic of MEMIT/AlphaEdit: its value, padding, sources, files and CLI; plus helpers
shared by the MEMIT and AlphaEdit tests (a tiny Llama whose edits can move its predictions)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from editor_helpers import tiny_job, toy_records

from hiedit.baselines.key_stats import (
    KeyStatsConfig,
    TextSample,
    fit_key_stats,
    fit_second_moments,
    load_key_stats,
    load_text,
    pydoc_documents,
    save_key_stats,
    sidecar_path,
)
from hiedit.cli import main
from hiedit.data.tokenize import encode_qa
from hiedit.errors import ConfigError
from hiedit.models import load_model

# Layers 0-2 of the 4-layer tiny Llama: the last edited layer must not be the model's last.
DOWN_PROJ = [f"model.layers.{i}.mlp.down_proj" for i in (0, 1, 2)]
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A statistic of keys.",
    "Lists, tuples and dictionaries are the built-in containers of the language.",
    "Short.",
    "Every key of generic text enters the second moment once per token position.",
]


def locate_job():
    """A tiny Llama job with larger initial weights, so that an edit visibly moves predictions."""
    job = tiny_job()
    job["model"]["architecture"]["initializer_range"] = 0.2
    return job


def fresh_model():
    return load_model(locate_job()["model"])


_STATS = {}


def tiny_stats():
    """The key statistic of :data:`DOWN_PROJ` on 300 paragraphs of pydoc text (cached)."""
    if "stats" not in _STATS:
        model, tokenizer = fresh_model()
        cfg = KeyStatsConfig.from_mapping(
            {"source": "pydoc-topics", "n_samples": 300, "max_length": 128, "batch_tokens": 4096}
        )
        stats = fit_key_stats(model, tokenizer, DOWN_PROJ, cfg, model_name="tiny-llama")
        stats.sha256 = "fitted-in-memory"
        _STATS["stats"] = stats
    return _STATS["stats"]


def target_logprob(model, tokenizer, record) -> float:
    """Mean log-probability of the edit target's tokens on the edit prompt."""
    batch = encode_qa(tokenizer, [record.edit.prompt], [record.edit.target])
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits.float()
    mask = batch.labels != -100
    picked = torch.log_softmax(logits[mask], -1).gather(1, batch.labels[mask][:, None])
    return float(picked.mean())


def manual_moment(model, tokenizer, name, texts):
    """E[k kᵀ] from one unpadded forward per text (the definition, written out)."""
    module = dict(model.named_modules())[name]
    rows = []
    handle = module.register_forward_pre_hook(lambda m, args: rows.append(args[0][0].double()))
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
    handle.remove()
    keys = torch.cat(rows)
    return keys.T @ keys / keys.shape[0], keys.shape[0]


def test_second_moment_is_the_mean_over_tokens_without_padding():
    model, tokenizer = fresh_model()
    # Small batches force padding of uneven rows; the statistic must not see the pad positions.
    moments, tokens = fit_second_moments(
        model, tokenizer, DOWN_PROJ, TEXT, max_length=128, batch_tokens=60
    )
    for name in DOWN_PROJ:
        expected, count = manual_moment(model, tokenizer, name, TEXT)
        assert tokens == count
        assert moments[name].dtype == torch.float64
        torch.testing.assert_close(moments[name], expected, rtol=1e-6, atol=1e-9)
    # Cut to max_length tokens per document.
    _, cut = fit_second_moments(model, tokenizer, DOWN_PROJ, TEXT, max_length=8, batch_tokens=60)
    assert cut == sum(min(8, len(tokenizer(t)["input_ids"])) for t in TEXT) < tokens


def test_pydoc_source_and_subset():
    docs = pydoc_documents()
    assert len(docs) > 1000 and all(any(c.isalpha() for c in d) for d in docs)
    full = load_text(KeyStatsConfig.from_mapping({"source": "pydoc-topics", "n_samples": 0}))
    assert full.documents == docs and full.version.startswith("python ")
    cfg = KeyStatsConfig.from_mapping({"source": "pydoc-topics", "n_samples": 50})
    first, second = load_text(cfg), load_text(cfg)
    assert len(first.documents) == 50 and first.sha256() == second.sha256()
    other = load_text(
        KeyStatsConfig.from_mapping({"source": "pydoc-topics", "n_samples": 50, "sample_seed": 2})
    )
    assert other.sha256() != first.sha256()


def test_wikipedia_source_reads_through_datasets(monkeypatch):
    calls = {}

    class FakeDataset:
        _fingerprint = "abc"

        def __init__(self, texts):
            self.texts = texts

        def __len__(self):
            return len(self.texts)

        def select(self, indices):
            return FakeDataset([self.texts[i] for i in indices])

        def __getitem__(self, key):
            assert key == "text"
            return list(self.texts)

    def load_dataset(path, name, split):
        calls.update(path=path, name=name, split=split)
        return FakeDataset([f"Article number {i}." for i in range(10)])

    monkeypatch.setitem(
        sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset, __version__="x")
    )
    text = load_text(KeyStatsConfig.from_mapping({"n_samples": 4}))
    assert calls == {"path": "wikimedia/wikipedia", "name": "20231101.en", "split": "train"}
    assert len(text.documents) == 4 and text.origin["documents_available"] == 10
    assert text.source == "wikipedia" and "wikimedia/wikipedia/20231101.en" in text.version


def test_save_load_and_tamper(tmp_path):
    model, tokenizer = fresh_model()
    cfg = KeyStatsConfig.from_mapping({"source": "pydoc-topics", "max_length": 64})
    text = TextSample("test", "1", TEXT, {})
    stats = fit_key_stats(model, tokenizer, DOWN_PROJ[:1], cfg, model_name="tiny", text=text)
    path = save_key_stats(stats, tmp_path / "stats.pt")
    side = json.loads(sidecar_path(path).read_text())
    assert side["tokens"] == stats.info["tokens"] and side["documents"] == len(TEXT)
    assert side["text_sha256"] == text.sha256() and side["sha256"] == stats.sha256
    assert side["modules"] == {DOWN_PROJ[0]: [64, 64]}
    loaded = load_key_stats(path)
    assert loaded.sha256 == stats.sha256
    torch.testing.assert_close(
        loaded.second_moments[DOWN_PROJ[0]], stats.second_moments[DOWN_PROJ[0]]
    )
    with open(path, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ConfigError, match="does not match its sidecar"):
        load_key_stats(path)
    sidecar_path(path).unlink()
    with pytest.raises(ConfigError, match="sidecar"):
        load_key_stats(path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source": "books"}, "baselines.key_stats.source: must be one of"),
        ({"n_samples": -1}, "baselines.key_stats.n_samples: must be >= 0"),
        ({"max_length": 1.5}, "baselines.key_stats.max_length: must be an integer"),
        ({"batch_tokens": True}, "baselines.key_stats.batch_tokens: must be an integer"),
        ({"colour": 1}, "baselines.key_stats.colour: unknown key"),
    ],
)
def test_bad_settings_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        KeyStatsConfig.from_mapping(values)


def test_cli_fit_stats_writes_tensor_and_sidecar(tmp_path, capsys):
    job = locate_job()
    job["model_name"] = "tiny-llama"
    job["baselines"] = {
        "key_stats": {"source": "pydoc-topics", "n_samples": 40, "max_length": 64},
        "memit": {"layers": {"tiny-llama": [0, 1]}},
        "alphaedit": {"layers": {"tiny-llama": [1, 2]}},
    }
    config = tmp_path / "job.json"
    config.write_text(json.dumps(job))
    out = tmp_path / "stats" / "key_stats.pt"
    assert (
        main(
            [
                "baselines",
                "fit-stats",
                "--run-config",
                str(config),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    stats = load_key_stats(out)
    assert sorted(stats.second_moments) == DOWN_PROJ
    assert stats.info["source"]["name"] == "pydoc-topics" and stats.info["documents"] == 40
    assert stats.info["model"] == "tiny-llama"
    assert sorted(p.name for p in out.parent.iterdir()) == ["key_stats.json", "key_stats.pt"]
    # A run configuration without the section is refused, naming it.
    del job["baselines"]["key_stats"]
    config.write_text(json.dumps(job))
    assert main(["baselines", "fit-stats", "--run-config", str(config), "--out", str(out)]) == 2
    assert "baselines.key_stats" in capsys.readouterr().err


def test_helpers_give_an_editable_model():
    model, tokenizer = fresh_model()
    stats = tiny_stats()
    assert sorted(stats.second_moments) == DOWN_PROJ
    assert stats.info["tokens"] > 10000
    assert target_logprob(model, tokenizer, toy_records(1)[0]) < 0
