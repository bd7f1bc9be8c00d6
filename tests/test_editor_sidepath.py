"""The side path equals the materialised update, and its gradients are exact."""

from __future__ import annotations

import torch
from editor_helpers import tiny_job, tiny_model, toy_records

from hiedit.editor import load_editor
from hiedit.editor.losses import answer_logits, scoring_batch
from hiedit.editor.prefix import PrefixCache
from hiedit.editor.sidepath import side_path


def _setup():
    job = tiny_job()
    model, tok = tiny_model(job)
    editor = load_editor(job, model, tok, None)
    records = toy_records(4)
    captures, _ = editor.capture(records[:1])
    editor.update_normalizers(captures)
    factors = editor.factors(captures)
    # Make the updates large enough to matter for a random model.
    factors = [type(f)(f.a, f.b, f.scale * 20) for f in factors]
    batch = scoring_batch(tok, [[r] for r in records], 0.9, "cpu").batch
    return editor, model, factors, batch


def test_side_path_equals_committed_update():
    editor, model, factors, batch = _setup()
    mask = [1.0, 0.0, 1.0, 1.0]
    with torch.no_grad(), side_path(editor.modules, factors, mask):
        side = model(**batch.model_inputs()).logits
    with torch.no_grad():
        plain = model(**batch.model_inputs()).logits
        for module, f, m in zip(editor.modules, factors, mask, strict=True):
            module.weight += m * f.dense()
        committed = model(**batch.model_inputs()).logits
    assert (side - plain).abs().max() > 1e-3  # the update changes the output
    torch.testing.assert_close(side, committed, atol=1e-5, rtol=1e-4)


def test_per_row_mask_scores_rows_under_different_masks():
    editor, model, factors, batch = _setup()
    rows = batch.input_ids.shape[0]
    per_row = torch.tensor([0.0, 1.0] * (rows // 2))
    with torch.no_grad():
        with side_path(editor.modules, factors, [per_row] * 4):
            mixed = model(**batch.model_inputs()).logits
        base = model(**batch.model_inputs()).logits
        with side_path(editor.modules, factors, [1.0] * 4):
            full = model(**batch.model_inputs()).logits
    expected = torch.where(per_row.view(-1, 1, 1) > 0, full, base)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-4)


def test_prefix_cache_gives_the_same_logits_and_skips_lower_layers():
    editor, model, factors, batch = _setup()
    prefix = PrefixCache(model, editor.modules)
    assert prefix.supported and prefix.first == 1
    calls = []
    handle = model.model.layers[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad(), side_path(editor.modules, factors, [1.0] * 4):
            full = answer_logits(model, batch)
            cached_first = answer_logits(model, batch, prefix)
            cached_again = answer_logits(model, batch, prefix)
    finally:
        handle.remove()
    torch.testing.assert_close(cached_first, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached_again, full, atol=1e-5, rtol=1e-4)
    assert len(calls) == 2  # the full forward and the one prefix computation


def test_mask_gradient_through_side_path_matches_finite_difference():
    editor, model, factors, batch = _setup()
    model.to(torch.float64)  # a clean finite difference
    factors = [type(f)(f.a.double(), f.b.double(), f.scale.double()).detached() for f in factors]
    m = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)

    def loss_at(mask):
        with side_path(editor.modules, factors, list(mask)):
            logits = answer_logits(model, batch)
        return torch.log_softmax(logits, -1)[:, 5].sum()

    loss_at(m).backward()
    eps = 1e-3  # the RMSNorm runs in fp32 even in a float64 model
    for i in range(4):
        plus, minus = m.detach().clone(), m.detach().clone()
        plus[i] += eps
        minus[i] -= eps
        with torch.no_grad():
            fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        assert abs(m.grad[i].item() - fd.item()) <= 1e-4 + 2e-3 * abs(fd.item())
    assert m.grad.abs().sum() > 0
