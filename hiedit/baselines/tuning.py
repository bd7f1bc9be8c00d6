"""A baseline editor's hyperparameters chosen on the validation slice by a grid search.

A baseline's section may hold a ``search`` mapping (``config.yaml``, usually in a setup's
overrides): each key is either a key of the section with a list of candidate values
(``mom2_update_weight: [10, 100, 1000]``) or a group name with a list of mappings whose keys vary
together (``target: [{v_num_grad_steps: 25, n_prefixes: 5}, {v_num_grad_steps: 10,
n_prefixes: 2}]``). For a key whose section value is a per-model table (MEMIT's ``layers``), a
candidate that is not a mapping is the entry of the job's model (``layers: [[2, 3, 4], [4, 5,
6]]``). Every combination (the product of the lists, in the order written, at most
:data:`MAX_COMBINATIONS`) is one run of the sequential protocol
(:func:`hiedit.evaluation.stream.run_stream`) on the validation slice of the *train* split, the
first ``training.validation_edits`` records of
:func:`hiedit.editor.validation.split_validation` (``training.validation_size``): the same
records HiEdit's training and its tuned-step comparator are validated on. The eval stream is
never looked at. Every run starts from the unedited weights (the edited modules' weights are
copied before and written back after each candidate) and reuses the unedited model's scores of
the first run. Candidates are ranked by :func:`hiedit.editor.validation.validation_score`; a tie
goes to the earlier combination, so a grid should list the published or cheaper value first. A
candidate whose edits diverge (non-finite values, a singular solve) is logged and never chosen.

The result is the variant's fitted output (``python -m hiedit train``, the workflow's
``train_editor`` rule): a small file with the chosen values, the section and grid it was
searched under and the validation records, plus a CSV with every candidate's metrics. While it
runs, the rows of the finished candidates are kept in ``<out>.partial``; with ``resume`` a
search interrupted under the same section, grid and validation records continues after them
(each candidate's stream depends on nothing the earlier ones did).
:func:`tuned_section` reads it back for the evaluation (refusing one written under another
section or grid).

This module imports torch only inside the functions that run the search: the configuration
checks (:func:`combinations`) run where the workflow parses its configuration.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiedit.errors import CheckpointMismatchError, ConfigError
from hiedit.registry import SEARCH_KEY

if TYPE_CHECKING:
    from hiedit.config import JobConfig
    from hiedit.data.records import EditRecord

log = logging.getLogger(__name__)

# One validation stream per combination: a grid larger than this is a mistake, not a search.
MAX_COMBINATIONS = 64
KIND = "hiedit-baseline-search"
VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """One combination of the grid: the values as written (``values``, search key -> value)
    and the whole section they give (``section``, without ``search``)."""

    index: int
    values: dict[str, Any]
    section: dict[str, Any]

    def assigned(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The section keys this candidate sets differently from, or in addition to, ``base``."""
        return {k: v for k, v in self.section.items() if k not in base or base[k] != v}


def split_search(section: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(section without search, search)`` of a baseline section."""
    base = {k: copy.deepcopy(v) for k, v in section.items() if k != SEARCH_KEY}
    return base, copy.deepcopy(dict(section.get(SEARCH_KEY) or {}))


def _assign(
    base: Mapping[str, Any],
    key: str,
    value: Any,
    known: set[str],
    model_name: str | None,
    where: str,
) -> dict[str, Any]:
    """The section keys one candidate value of search key ``key`` sets."""
    if key in known:
        current = base.get(key)
        if isinstance(current, Mapping) and not isinstance(value, Mapping):
            # A per-model table: the candidate is the entry of the job's model (checked for
            # every model of the table when no model is given).
            models = [model_name] if model_name is not None else list(current) or ["*"]
            return {key: {**copy.deepcopy(dict(current)), **{m: value for m in models}}}
        return {key: copy.deepcopy(value)}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{where}: {key!r} is not a key of the section, and a group of keys needs "
            f"non-empty mappings as candidates, got {value!r} (known keys: "
            f"{', '.join(sorted(known))})"
        )
    out: dict[str, Any] = {}
    for inner, inner_value in value.items():
        if inner not in known:
            raise ConfigError(f"{where}.{inner}: not a key of the section")
        out.update(_assign(base, inner, inner_value, known, model_name, f"{where}.{inner}"))
    return out


def combinations(
    section: Mapping[str, Any],
    *,
    known: Sequence[str],
    where: str,
    model_name: str | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[Candidate]:
    """Every combination of ``section``'s ``search`` grid, in the order written (none without
    a search). ``known``: the section's keys; ``fixed``: keys the variant sets itself, which a
    group may not vary. Errors name ``where.search.<key>[<index>]``."""
    base, search = split_search(section)
    if not search:
        return []
    known = set(known) - {SEARCH_KEY}
    fixed = fixed or {}
    lists = []
    for key, values in search.items():
        at = f"{where}.{SEARCH_KEY}.{key}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: must be a non-empty list of candidate values")
        options = []
        for index, value in enumerate(values):
            assigned = _assign(base, key, value, known, model_name, f"{at}[{index}]")
            clash = sorted(set(assigned) & set(fixed))
            if clash:
                raise ConfigError(
                    f"{at}[{index}]: sets {', '.join(clash)}, which this variant fixes "
                    f"({', '.join(f'{k}={fixed[k]!r}' for k in clash)})"
                )
            options.append((value, assigned, f"{at}[{index}]"))
        lists.append((key, options))
    count = math.prod(len(options) for _, options in lists)
    if count > MAX_COMBINATIONS:
        sizes = " × ".join(f"{len(options)} ({key})" for key, options in lists)
        raise ConfigError(
            f"{where}.{SEARCH_KEY}: {sizes} = {count} combinations, more than the "
            f"{MAX_COMBINATIONS} one search may run; shorten a list"
        )
    out = []
    for index, picks in enumerate(itertools.product(*(options for _, options in lists))):
        merged = copy.deepcopy(base)
        for _, assigned, _ in picks:
            merged.update(copy.deepcopy(assigned))
        values = {
            key: copy.deepcopy(value) for (key, _), (value, _, _) in zip(lists, picks, strict=True)
        }
        out.append(Candidate(index, values, merged))
    return out


def check_search(
    section: Mapping[str, Any], known: Sequence[str], where: str, check: Any = None
) -> int:
    """Validate a section's grid where no model is known yet (the configuration file):
    every candidate value, merged into the section, must pass ``check(section, where)`` (the
    schema). Returns the number of combinations."""
    base, search = split_search(section)
    known = set(known) - {SEARCH_KEY}
    # Each value once (not each combination): a bad value is named by its own key and index.
    for key, values in search.items():
        at = f"{where}.{SEARCH_KEY}.{key}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: must be a non-empty list of candidate values")
        for index, value in enumerate(values):
            assigned = _assign(base, key, value, known, None, f"{at}[{index}]")
            if check is not None:
                check({**base, **assigned}, f"{at}[{index}]")
    return len(combinations(section, known=known, where=where))


def section_keys(config_class: type) -> list[str]:
    """The keys of a baseline's section: the fields of its settings dataclass."""
    import dataclasses

    return [f.name for f in dataclasses.fields(config_class)]


# --- running the search -------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What a search produced: every candidate's row, the chosen one and the file written."""

    rows: list[dict[str, Any]]
    best: Candidate
    best_score: float
    chosen: dict[str, Any]
    path: Path


def validation_records(job: JobConfig, records: Sequence[EditRecord]) -> list[EditRecord]:
    """The first ``training.validation_edits`` records of the train split's validation slice."""
    from hiedit.editor.validation import split_validation

    _, held_out = split_validation(records, job.training.validation_size)
    held_out = held_out[: job.training.validation_edits]
    if not held_out:
        raise ConfigError(
            f"variant {job.variant!r}: the grid search needs a validation slice of the train "
            "split: set training.validation_size and training.validation_edits > 0"
        )
    return held_out


def _stream_settings(records: Sequence[EditRecord], batch_size: int):
    from hiedit.evaluation.stream import StreamSettings

    # As HiEdit's validation streams (hiedit.editor.validation.ValidationStream): retention over
    # the first quarter, no learning curve.
    return StreamSettings(
        n_edits=len(records),
        num_pre=max(1, len(records) // 4),
        n_curve_points=0,
        curve_sample=1,
        batch_size=batch_size,
        seed=0,
    )


def _snapshot(model, names: Sequence[str]) -> dict[str, Any]:
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach().clone() for name in names}


def _restore(model, saved: Mapping[str, Any]) -> None:
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, weight in saved.items():
            modules[name].weight.copy_(weight)


def _cell(value: Any) -> Any:
    """A grid value as one CSV cell (lists and mappings as JSON)."""
    return (
        value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    )


def grid_search(
    job: JobConfig,
    model,
    tokenizer,
    records: Sequence[EditRecord],
    out: str | os.PathLike[str],
    *,
    stats: str | os.PathLike[str] | None = None,
    validation_path: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> SearchResult:
    """Search the job's baseline section on the validation slice of ``records`` (the train
    split) and write the chosen values to ``out``, every candidate's metrics to
    ``validation_path`` (default ``<out stem>.validation.csv``) and an empty per-step loss log
    to ``log_path`` (nothing is trained; the workflow expects the file). ``resume``: continue
    the unfinished search in ``<out>.partial`` (module docstring)."""
    import importlib

    import torch

    from hiedit.atomic import save_torch, write_json
    from hiedit.editor.trainer import (
        default_log_path,
        default_validation_path,
        partial_path,
        write_log,
        write_rows,
    )
    from hiedit.editor.validation import LOGGED_METRICS, validation_score
    from hiedit.editors import build_baseline
    from hiedit.errors import NonFiniteError
    from hiedit.evaluation.stream import run_stream

    spec = job.variant_spec
    if spec.baseline is None:
        raise ConfigError(f"variant {job.variant!r} is not a baseline editor")
    where = f"baselines.{spec.baseline}"
    section = job.baselines[spec.baseline]
    module = importlib.import_module(spec.builder)
    candidates = combinations(
        section,
        known=section_keys(module.CONFIG),
        where=where,
        model_name=job.model_name,
        fixed=spec.baseline_overrides,
    )
    if not candidates:
        raise ConfigError(
            f"variant {job.variant!r}: {where} has no search, so nothing is fitted: evaluate it "
            "with --untrained"
        )
    # Every candidate's settings are checked before the first stream runs.
    for candidate in candidates:
        try:
            module.CONFIG.from_mapping(candidate.section, where)
        except ConfigError as err:
            raise ConfigError(
                f"{where}.{SEARCH_KEY}: combination {candidate.index} {candidate.values}: {err}"
            ) from None
    if spec.stats is not None and stats is None:
        raise ConfigError(f"variant {spec.name!r} needs its fitted statistic ({spec.stats})")
    loaded = module.load_stats(stats) if stats is not None else None
    held_out = validation_records(job, records)
    settings = _stream_settings(held_out, job.evaluation.batch_size)
    base, search = split_search(section)
    out = Path(out)
    partial = partial_path(out)
    identity = {
        "variant": job.variant,
        "model_name": job.model_name,
        "section": base,
        "search": search,
        "validation_records": [r.record_id for r in held_out],
        "stats_sha256": getattr(loaded, "sha256", None),
    }
    rows, scores = _resumed(partial, identity) if resume else ([], [])
    unedited = None
    log.info(
        "%s: %d candidates on %d validation records%s",
        job.variant,
        len(candidates),
        len(held_out),
        f", {len(rows)} done before" if rows else "",
    )
    for candidate in candidates[len(rows) :]:
        started = time.perf_counter()
        editor = build_baseline(job, candidate.section, model, tokenizer, loaded)
        saved = _snapshot(model, editor.module_names)
        row: dict[str, Any] = {"candidate": candidate.index}
        row.update({key: _cell(value) for key, value in candidate.values.items()})
        try:
            result = run_stream(
                editor, model, tokenizer, held_out, settings, progress=False, unedited=unedited
            )
        except (NonFiniteError, torch.linalg.LinAlgError) as err:
            log.warning("%s candidate %s failed: %s", job.variant, candidate.values, err)
            score, metrics, edit_seconds, error = float("nan"), {}, float("nan"), str(err)
        else:
            unedited = result.unedited if result.unedited is not None else unedited
            metrics = dict(result.metrics)
            score = validation_score(metrics)
            edit_seconds = result.seconds["edits"] / result.n_edits
            error = ""
        finally:
            _restore(model, saved)
        row["score"] = score
        row.update({name: metrics.get(name) for name in LOGGED_METRICS})
        row["edit_seconds"] = edit_seconds
        row["seconds"] = time.perf_counter() - started
        row["error"] = error
        rows.append(row)
        scores.append(score)
        write_json(partial, {"kind": KIND, "identity": identity, "rows": rows, "scores": scores})
        log.info("%s candidate %s: score %.4f", job.variant, candidate.values, score)
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise ConfigError(
            f"variant {job.variant!r}: every candidate of {where}.{SEARCH_KEY} failed "
            f"(first: {rows[0]['error']})"
        )
    best_index = max(finite, key=lambda i: (scores[i], -i))
    best = candidates[best_index]
    chosen = best.assigned(base)
    for row in rows:
        row["chosen"] = row["candidate"] == best_index
    state = {
        "kind": KIND,
        "version": VERSION,
        **identity,
        "baseline": spec.baseline,
        "chosen": chosen,
        "values": best.values,
        "score": scores[best_index],
    }
    save_torch(out, state)
    write_rows(rows, Path(validation_path or default_validation_path(out)))
    write_log([], Path(log_path or default_log_path(out)))
    partial.unlink(missing_ok=True)
    log.info(
        "%s: chose %s (score %.4f of %d candidates)",
        job.variant,
        best.values,
        scores[best_index],
        len(candidates),
    )
    return SearchResult(rows, best, scores[best_index], chosen, out)


def _resumed(
    partial: Path, identity: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[float]]:
    """The finished candidates of an interrupted search (none without a partial file)."""
    if not partial.is_file():
        return [], []
    state = json.loads(partial.read_text())
    saved = state.get("identity") if isinstance(state, dict) else None
    if state.get("kind") != KIND or not isinstance(saved, dict):
        raise CheckpointMismatchError(f"{partial}: not an unfinished baseline search")
    # Through JSON, as the saved identity went (tuples become lists).
    expected = json.loads(json.dumps(identity))
    differ = [key for key in expected if saved.get(key) != expected[key]]
    if differ:
        raise CheckpointMismatchError(
            f"{partial}: an unfinished search under another configuration ({', '.join(differ)} "
            "differ); delete it to start over"
        )
    log.info("resuming the search in %s after %d candidates", partial, len(state["rows"]))
    return list(state["rows"]), [float(s) for s in state["scores"]]


def load_search(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file :func:`grid_search` wrote."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointMismatchError(f"{path}: not a baseline search result ({err})") from err
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointMismatchError(f"{path}: not a baseline search result")
    if state.get("version") != VERSION:
        raise CheckpointMismatchError(
            f"{path}: search result version {state.get('version')}, expected {VERSION}"
        )
    return state


def tuned_section(job: JobConfig, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The job's baseline section with the values its search chose (``path``) on top.

    Refused when ``path`` was searched for another variant, model, section or grid."""
    spec = job.variant_spec
    base, search = split_search(job.baselines[spec.baseline])
    state = load_search(path)
    expected = {
        "variant": job.variant,
        "baseline": spec.baseline,
        "model_name": job.model_name,
        "section": base,
        "search": search,
    }
    differ = [key for key, value in expected.items() if state.get(key) != value]
    if differ:
        details = "; ".join(
            f"{key}: search {state.get(key)!r} vs config {expected[key]!r}" for key in differ
        )
        raise CheckpointMismatchError(f"{path} was searched under another configuration: {details}")
    return {**base, **state["chosen"]}
