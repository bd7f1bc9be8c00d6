"""Each supported backbone family: the editor's logits are the model's own, and the paper profiles.

The editor runs the decoder and the output head apart (the head only at the answer positions), so
for every family the capture's loss and gradients, ``answer_logits`` and the prefix cache must give
exactly what the model's own forward gives. The tiny Gemma-2 here is built so that every Gemma-2
mechanism is active on the toy prompts: logits beyond the final soft-cap, attention scores beyond
the attention soft-cap, and a sliding window shorter than the prompts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from editor_helpers import MODULES, tiny_job, toy_records

from hiedit.config import load_config
from hiedit.data.tokenize import IGNORE_INDEX, encode_qa
from hiedit.editor.capture import capture_gradients, row_mask
from hiedit.editor.losses import answer_logits, scoring_batch
from hiedit.editor.lowlevel import Factors
from hiedit.editor.packing import Packing, supports_packing
from hiedit.editor.prefix import PrefixCache
from hiedit.editor.sidepath import side_path
from hiedit.errors import ModelError
from hiedit.models import candidate_modules, check_backbone, check_profile, load_model
from hiedit.models.head import output_logits
from hiedit.models.loading import ATTENTION

ROOT = Path(__file__).resolve().parents[1]
LLAMA = tiny_job()["model"]
GEMMA2 = {
    "source": "random",
    "family": "gemma2",
    "dtype": "float32",
    "init_seed": 0,
    "architecture": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 128,
        # Larger weights than the default 0.02, so attention scores reach about 2.5.
        "initializer_range": 0.3,
        "attn_logit_softcapping": 1.0,
        "final_logit_softcapping": 30.0,
        # The toy prompts are 34-41 byte tokens long.
        "sliding_window": 6,
    },
    "modules": list(MODULES),
    "k": 2,
}
# The tied head (and embedding) weights are multiplied by this, so raw logits reach about twice
# the final soft-cap of 30.
GEMMA2_HEAD_SCALE = 10.0


def build(family: str):
    if family == "llama":
        return load_model(LLAMA)
    model, tokenizer = load_model(GEMMA2)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(GEMMA2_HEAD_SCALE)
    return model, tokenizer


@pytest.fixture(params=["llama", "gemma2"])
def backbone(request):
    return (request.param, *build(request.param))


def toy_batch(tokenizer):
    """Equiv and unrel tuples of four records: eight rows of different lengths."""
    return scoring_batch(tokenizer, [[r] for r in toy_records(4)], 0.9, "cpu").batch


def forward_logits(model, batch):
    return model(**batch.model_inputs(), use_cache=False).logits


def random_factors(modules, rank: int = 3, seed: int = 0) -> list[Factors]:
    generator = torch.Generator().manual_seed(seed)
    factors = []
    for module in modules:
        d_out, d_in = module.weight.shape
        a = torch.randn(rank, d_in, generator=generator)
        b = torch.randn(rank, d_out, generator=generator)
        factors.append(Factors(a, b, torch.tensor(0.05)))
    return factors


def test_output_logits_are_the_forward_logits(backbone):
    family, model, tok = backbone
    batch = toy_batch(tok)
    positions = batch.labels != IGNORE_INDEX
    with torch.no_grad():
        forward = forward_logits(model, batch)
        hidden = model.get_decoder()(**batch.model_inputs(), use_cache=False).last_hidden_state
        torch.testing.assert_close(output_logits(model, hidden), forward)
        torch.testing.assert_close(output_logits(model, hidden[positions]), forward[positions])
        raw = model.get_output_embeddings()(hidden)
    if family == "gemma2":
        cap = model.config.final_logit_softcapping
        assert raw.abs().max() > 1.5 * cap  # the cap is active on these logits ...
        assert forward.abs().max() < cap
        assert (raw - forward).abs().max() > 10  # ... so the bare head would be far off
    else:
        torch.testing.assert_close(raw, forward)


def test_capture_loss_and_gradients_are_the_forward_ones(backbone):
    family, model, tok = backbone
    records = toy_records(2)
    batch = encode_qa(tok, [r.edit.prompt for r in records], [r.edit.target for r in records])
    modules = candidate_modules(model, MODULES)
    captures, loss = capture_gradients(model, modules, batch, "all")

    # The reference: the model's own forward and loss, with autograd on the module outputs.
    outputs: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for i, module in enumerate(modules):

        def hook(module, args, output, i=i):
            inputs[i], outputs[i] = args[0].detach(), output

        handles.append(module.register_forward_hook(hook))
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(True)  # so every activation is part of the graph
    try:
        logits = forward_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch.labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        answers = (batch.labels != IGNORE_INDEX).sum(1)
        reference = (nll.sum(1) / answers).sum()  # mean NLL per edit, summed over the edits
        grads = torch.autograd.grad(reference, [outputs[i] for i in range(len(modules))])
    finally:
        embeddings.requires_grad_(False)
        for handle in handles:
            handle.remove()

    assert loss == pytest.approx(reference.item(), rel=1e-6)
    keep = row_mask(batch, "all")
    for i, (capture, grad) in enumerate(zip(captures, grads, strict=True)):
        torch.testing.assert_close(capture.u, inputs[i][keep], msg=f"u of {MODULES[i]}")
        torch.testing.assert_close(
            capture.delta, grad[keep], rtol=1e-5, atol=1e-8, msg=f"δ of {MODULES[i]}"
        )
        assert capture.delta.abs().max() > 0
    if family == "gemma2":
        with torch.no_grad():
            hidden = model.get_decoder()(**batch.model_inputs()).last_hidden_state
            bare = model.get_output_embeddings()(hidden).transpose(1, 2)
            nll = torch.nn.functional.cross_entropy(
                bare, batch.labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
        assert abs(float((nll.sum(1) / answers).sum()) - loss) > 1  # uncapped: another loss


def test_answer_logits_with_and_without_the_prefix_cache_are_the_forward_logits(backbone):
    family, model, tok = backbone
    batch = toy_batch(tok)
    positions = batch.labels != IGNORE_INDEX
    modules = candidate_modules(model, MODULES)
    factors = random_factors(modules)
    prefix = PrefixCache(model, modules)
    assert prefix.supported and prefix.first == 1
    mask = [1.0, 0.0, 1.0, 1.0]
    with torch.no_grad():
        unedited = forward_logits(model, batch)[positions]
        with side_path(modules, factors, mask):
            forward = forward_logits(model, batch)[positions]
            plain = answer_logits(model, batch)
            cached = answer_logits(model, batch, prefix)
            cached_again = answer_logits(model, batch, prefix)  # from the cache this time
    assert (forward - unedited).abs().max() > 1e-2  # the side path changes the logits
    torch.testing.assert_close(plain, forward)
    torch.testing.assert_close(cached, forward)
    torch.testing.assert_close(cached_again, forward)

    # The gradients to the factors (what training differentiates) agree as well.
    def factor_grads(logits_of):
        leaves = [f.leaf_copy() for f in factors]
        with side_path(modules, leaves, mask):
            logits = logits_of()
        torch.log_softmax(logits, -1)[:, :50].sum().backward()
        return [t.grad for f in leaves for t in (f.a, f.b, f.scale)]

    expected = factor_grads(lambda: forward_logits(model, batch)[positions])
    cached_grads = factor_grads(lambda: answer_logits(model, batch, prefix))
    for grad, want in zip(cached_grads, expected, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)

    if family == "gemma2":
        # The sliding window matters on these prompts: with prefix.first = 1 the upper pass runs
        # layers 1-3, whose mask types a lookup by list position would take from layers 0-2.
        assert model.config.layer_types[:2] == ["sliding_attention", "full_attention"]
        saved = model.config.sliding_window
        model.config.sliding_window = 1000
        try:
            with torch.no_grad(), side_path(modules, factors, mask):
                unwindowed = forward_logits(model, batch)[positions]
        finally:
            model.config.sliding_window = saved
        assert (unwindowed - forward).abs().max() > 1e-2


@pytest.mark.parametrize("capacity", [80, 1000])
def test_packed_sequences_give_the_padded_logits_and_gradients(backbone, capacity):
    """Packing (two sequences per row, or all in one) changes nothing but the rounding.

    The rows are scored under per-row masks (half at the base weights, half edited), spread
    over the packed positions as the training step does; on the Gemma-2 here every prompt is
    longer than its sliding window, so the window must be applied within each sequence.
    """
    family, model, tok = backbone
    assert supports_packing(model)
    batch = toy_batch(tok)
    packing = Packing.of(batch, capacity)
    assert packing.input_ids.shape[0] < batch.input_ids.shape[0]  # sequences really share rows
    modules = candidate_modules(model, MODULES)
    factors = random_factors(modules)
    per_row = torch.tensor([0.0, 1.0] * (batch.input_ids.shape[0] // 2))
    per_position = packing.per_position(per_row)
    prefix = PrefixCache(model, modules)

    def logits_and_grads(packed: bool, cached: bool):
        leaves = [f.leaf_copy() for f in factors]
        mask = per_position if packed else per_row
        with side_path(modules, leaves, [mask] * len(modules)):
            logits = answer_logits(
                model, batch, prefix if cached else None, packing if packed else None
            )
        torch.log_softmax(logits, -1)[:, :50].sum().backward()
        return logits.detach(), [t.grad for f in leaves for t in (f.a, f.b, f.scale)]

    want_logits, want_grads = logits_and_grads(packed=False, cached=False)
    for cached in (False, True):
        logits, grads = logits_and_grads(packed=True, cached=cached)
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)
        for grad, want in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)


def test_gemma2_runs_eager_attention_with_its_soft_capping():
    model, tok = build("gemma2")
    assert model.config._attn_implementation == "eager"
    batch = toy_batch(tok)
    with torch.no_grad():
        capped = forward_logits(model, batch)
        attentions = [layer.self_attn for layer in model.model.layers]
        for attention in attentions:
            attention.attn_logit_softcapping = None
        uncapped = forward_logits(model, batch)
        for attention in attentions:
            attention.attn_logit_softcapping = GEMMA2["architecture"]["attn_logit_softcapping"]
    assert (capped - uncapped).abs().max() > 1e-2  # the loaded implementation applies it
    model.config._attn_implementation = "sdpa"
    with pytest.raises(ModelError, match="'sdpa'.*'eager'.*'gemma2'"):
        check_backbone(model)


def test_unknown_model_type_is_refused_by_name():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = MistralForCausalLM(config).eval()
    with pytest.raises(ModelError, match="model type 'mistral'"):
        output_logits(model, torch.zeros(1, 16))
    with pytest.raises(ModelError, match="'mistral'"):
        check_backbone(model)
    assert not PrefixCache(model, [model.model.layers[1].mlp.up_proj]).supported

    class NotLlama(MistralForCausalLM):
        pass

    impostor = NotLlama(copy.deepcopy(config))
    impostor.config.model_type = "llama"
    with pytest.raises(ModelError, match="LlamaForCausalLM.*NotLlama"):
        output_logits(impostor, torch.zeros(1, 16))


def test_hidden_states_become_logits_only_in_the_head_module():
    head = ROOT / "hiedit" / "models" / "head.py"
    pattern = re.compile(r"get_output_embeddings|lm_head\s*\(|\.lm_head\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "hiedit").rglob("*.py"))
        if path != head
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


# Published dimensions of the paper's backbones, from the config.json of each hub repository:
# meta-llama/Meta-Llama-3-8B-Instruct and google/gemma-2-9b. The parameter counts are the
# published sizes (8.03 B and 9.24 B, Gemma-2's head tied to its embeddings).
PAPER_BACKBONES = {
    "llama3-8b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 128000,
            "eos_token_id": 128009,
        },
        8_030_261_248,
        11,
    ),
    "gemma2-9b": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "vocab_size": 256000,
            "hidden_size": 3584,
            "intermediate_size": 14336,
            "num_hidden_layers": 42,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "tie_word_embeddings": True,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 1,
        },
        9_241_705_984,
        32,
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER_BACKBONES))
def test_paper_backbone_profile_on_the_meta_device(name):
    import transformers

    config_name, model_name, dims, n_params, first_layer = PAPER_BACKBONES[name]
    entry = load_config(ROOT / "config.yaml")["models"][name]
    config = getattr(transformers, config_name)(**dims)
    kind = config.model_type
    if kind in ATTENTION:
        config._attn_implementation = ATTENTION[kind]
    with torch.device("meta"):  # shapes only: no memory, no download
        model = getattr(transformers, model_name)(config)
    assert sum(p.numel() for p in model.parameters()) == n_params
    check_backbone(model)
    check_profile(model, entry["modules"])
    modules = candidate_modules(model, entry["modules"])
    kinds = {name.rsplit(".", 1)[-1] for name in entry["modules"]}
    assert kinds <= {"gate_proj", "up_proj"}
    # MLP input projections: hidden -> intermediate.
    assert {tuple(m.weight.shape) for m in modules} == {
        (dims["intermediate_size"], dims["hidden_size"])
    }
    assert entry["k"] <= len(modules)
    prefix = PrefixCache(model, modules)
    assert prefix.supported and prefix.first == first_layer
