"""AlphaEdit: efficacy, preserved keys untouched, the null-space solve against the dense formula,
accumulated keys, resume, config errors."""

from __future__ import annotations

import pytest
import torch
from editor_helpers import toy_records
from test_baselines_key_stats import DOWN_PROJ, fresh_model, target_logprob, tiny_stats
from test_baselines_memit import TINY_SETTINGS, memit, resume_check

from hiedit.baselines.alphaedit import (
    AlphaEditConfig,
    build,
    null_space_basis,
)
from hiedit.baselines.locate import keys_and_outputs
from hiedit.errors import CheckpointMismatchError, ConfigError


def middle_threshold() -> float:
    """An eigenvalue threshold that leaves about half of each module's directions free."""
    stats = tiny_stats()
    return max(
        float(torch.linalg.eigvalsh(stats.second_moments[name].double())[32]) for name in DOWN_PROJ
    )


def alphaedit(model, tokenizer, modules=DOWN_PROJ, seed=0, **values):
    tiny = {k: v for k, v in TINY_SETTINGS.items() if k != "mom2_update_weight"}
    settings = AlphaEditConfig.from_mapping(
        {**tiny, "nullspace_threshold": middle_threshold(), "l2": 1e-3, **values}
    )
    return build(
        settings, model, tokenizer, module_names=list(modules), seed=seed, stats=tiny_stats()
    )


def preserved_basis(name: str, threshold: float) -> torch.Tensor:
    """Orthonormal columns spanning the keys AlphaEdit must preserve (eigenvalue ≥ threshold)."""
    moment = tiny_stats().second_moments[name].double()
    values, vectors = torch.linalg.eigh(moment)
    return vectors[:, values >= threshold]


def test_one_edit_raises_the_target_probability():
    model, tokenizer = fresh_model()
    record = toy_records(1)[0]
    before = target_logprob(model, tokenizer, record)
    editor = alphaedit(model, tokenizer)
    assert all(0 < d < 64 for d in editor.null_dims)
    step = editor.edit_records([record])
    assert target_logprob(model, tokenizer, record) > before + 0.02
    assert step.selected == DOWN_PROJ


def test_update_leaves_the_preserved_keys_outputs_unchanged():
    threshold = middle_threshold()
    model, tokenizer = fresh_model()
    editor = alphaedit(model, tokenizer)
    before = [m.weight.detach().double().clone() for m in editor.modules]
    record = toy_records(1)[0]
    # The factors themselves, in fp64: rows of A lie in the null space of the preserved keys.
    keys, outputs = keys_and_outputs(
        model, tokenizer, [record], editor.prefixes, editor.modules[0], editor.z_layer
    )
    update = editor.solve(0, keys, torch.ones_like(outputs))
    basis = preserved_basis(DOWN_PROJ[0], threshold)
    assert basis.shape[1] >= 16
    assert float((update.a @ basis).abs().max()) <= 1e-12 * float(update.a.abs().max())

    editor.edit_records([record])
    memit_model, memit_tokenizer = fresh_model()
    memit(memit_model, memit_tokenizer).edit_records([record])
    for index, name in enumerate(DOWN_PROJ):
        delta = editor.modules[index].weight.detach().double() - before[index]
        basis = preserved_basis(name, threshold)
        moved = float((delta @ basis).abs().max())
        # Committed into fp32 weights: exact up to the weights' rounding.
        assert moved <= 1e-5 * float(delta.abs().max()), (name, moved)
        memit_delta = memit_model.get_submodule(name).weight.detach().double() - before[index]
        assert float((memit_delta @ basis).abs().max()) > 1e-2 * float(memit_delta.abs().max())


def test_projector_is_the_small_eigenvalue_subspace():
    moment = tiny_stats().second_moments[DOWN_PROJ[1]]
    basis = null_space_basis(moment, middle_threshold())
    projector, dim = basis @ basis.T, basis.shape[1]
    torch.testing.assert_close(projector @ projector, projector)
    assert round(float(torch.trace(projector))) == dim
    values = torch.linalg.eigh(moment.double()).eigenvalues
    assert dim == int((values < middle_threshold()).sum())


def test_keys_of_earlier_edits_accumulate_across_the_stream():
    model, tokenizer = fresh_model()
    editor = alphaedit(model, tokenizer)
    records = toy_records(3)[1:]
    accumulated = [torch.zeros(64, 64, dtype=torch.float64) for _ in DOWN_PROJ]
    for record in records:
        editor.edit_records([record])
        for index, module in enumerate(editor.modules):
            keys, _ = keys_and_outputs(
                model, tokenizer, [record], editor.prefixes, module, editor.z_layer
            )
            accumulated[index] += keys.T @ keys
    for gram, basis, want in zip(editor.null_gram, editor.bases, accumulated, strict=True):
        torch.testing.assert_close(gram, basis.T @ want @ basis)


def test_null_space_solve_equals_the_public_codes_dense_system():
    """``solve(P (Kpᵀ Kp + Kᵀ K) + l2 I, P Kᵀ)`` (AlphaEdit_main.py) against the r × r Cholesky
    solve in the null space, with earlier keys accumulated and a ridge weight that matters."""
    model, tokenizer = fresh_model()
    editor = alphaedit(model, tokenizer, l2=0.5)
    generator = torch.Generator().manual_seed(3)
    earlier = torch.randn(40, 64, generator=generator, dtype=torch.float64)
    keys = torch.randn(3, 64, generator=generator, dtype=torch.float64)
    residuals = torch.randn(3, 64, generator=generator, dtype=torch.float64)
    for index, name in enumerate(DOWN_PROJ):
        basis = editor.bases[index]
        editor.null_gram[index] = basis.T @ (earlier.T @ earlier) @ basis
        own = null_space_basis(tiny_stats().second_moments[name], middle_threshold())
        projector, dim = own @ own.T, own.shape[1]
        assert dim == basis.shape[1]
        torch.testing.assert_close(basis @ basis.T, projector)
        dense = torch.linalg.solve(
            projector @ (earlier.T @ earlier + keys.T @ keys) + 0.5 * torch.eye(64).double(),
            projector @ keys.T,
        )
        update = editor.solve(index, keys, residuals)
        torch.testing.assert_close(update.a, dense.T, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(update.b, residuals)


def test_an_empty_null_space_gives_a_zero_update():
    moment = tiny_stats().second_moments[DOWN_PROJ[0]]
    assert null_space_basis(moment, 1e-30).shape == (64, 0)
    model, tokenizer = fresh_model()
    editor = alphaedit(model, tokenizer, nullspace_threshold=1e-30)
    assert set(editor.null_dims) == {0}
    update = editor.solve(0, torch.randn(2, 64, dtype=torch.float64), torch.ones(2, 64).double())
    assert update.a.shape == (2, 64) and not update.a.any()


def test_stream_resumes_with_identical_results(tmp_path):
    editor = resume_check(alphaedit, tmp_path)
    assert float(editor.null_gram[0].abs().sum()) > 0


def test_state_of_another_editor_is_refused(tmp_path):
    model, tokenizer = fresh_model()
    other = memit(model, tokenizer, v_num_grad_steps=2)
    other.save_state(tmp_path / "memit.pt")
    editor = alphaedit(*fresh_model(), v_num_grad_steps=2)
    with pytest.raises(CheckpointMismatchError, match="not a alphaedit editor state"):
        editor.load_state(tmp_path / "memit.pt")
    editor.save_state(tmp_path / "alpha.pt")
    wider = alphaedit(*fresh_model(), v_num_grad_steps=2, nullspace_threshold=1.0)
    with pytest.raises(CheckpointMismatchError, match="settings"):
        wider.load_state(tmp_path / "alpha.pt")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nullspace_threshold": 0}, "baselines.alphaedit.nullspace_threshold: must be > 0"),
        ({"l2": -1.0}, "baselines.alphaedit.l2: must be > 0"),
        ({"mom2_update_weight": 15000}, "baselines.alphaedit.mom2_update_weight: unknown key"),
        ({"n_prefixes": -1}, "baselines.alphaedit.n_prefixes: must be >= 0"),
        ({"layers": [4, 5]}, "baselines.alphaedit.layers: must be a mapping"),
    ],
)
def test_bad_hyperparameters_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        AlphaEditConfig.from_mapping(values)


def test_a_state_from_before_the_null_space_solver_is_refused_naming_the_file(tmp_path):
    model, tokenizer = fresh_model()
    editor = alphaedit(model, tokenizer, v_num_grad_steps=2)
    editor.edit_records(toy_records(1))
    editor.save_state(tmp_path / "alpha.pt")
    state = torch.load(tmp_path / "alpha.pt", weights_only=False)
    state["extra"] = {
        "accumulated": {name: torch.zeros(64, 64).double() for name in DOWN_PROJ},
        "null_dims": state["extra"]["null_dims"],
    }
    torch.save(state, tmp_path / "old.pt")
    fresh = alphaedit(*fresh_model(), v_num_grad_steps=2)
    before = [m.weight.detach().clone() for m in fresh.modules]
    with pytest.raises(CheckpointMismatchError, match=r"old\.pt: an AlphaEdit state from before"):
        fresh.load_state(tmp_path / "old.pt")
    for module, weight in zip(fresh.modules, before, strict=True):
        assert torch.equal(module.weight, weight)
