"""Helpers of the SBN and M2 tests: per-draw gradients, tiny datasets, timing-free records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from discograd.data.datasets import ImageData

TIMING_KEYS = ("seconds", "seconds_per_step", "speedup_vs_marginal")


def per_draw_grads(
    losses: Callable[[int], torch.Tensor],
    params: Sequence[torch.Tensor],
    n_draws: int,
    chunk: int = 100,
) -> torch.Tensor:
    """``[n_draws, P]`` independent gradient draws of a model's loss w.r.t. ``params``.

    ``losses(k)`` must return ``[k]`` losses of ``k`` independent replicas
    computed in one batched forward pass (the batch repeated ``k`` times, each
    replica summed over its data points); a batched backward pass with the
    identity as ``grad_outputs`` separates the replicas' gradients exactly.
    """
    rows = []
    for start in range(0, n_draws, chunk):
        k = min(chunk, n_draws - start)
        per = losses(k)
        assert per.shape == (k,)
        eye = torch.eye(k, dtype=per.dtype, device=per.device)
        grads = torch.autograd.grad(
            per, list(params), grad_outputs=eye, is_grads_batched=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros((k, *p.shape), dtype=p.dtype) if g is None else g).reshape(k, -1)
                    for g, p in zip(grads, params, strict=True)
                ],
                1,
            )
        )
    return torch.cat(rows)


def flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def tiny_data(
    shape: tuple[int, int] = (4, 4),
    n: tuple[int, int, int] = (60, 20, 20),
    n_classes: int = 3,
    seed: int = 0,
) -> ImageData:
    """Random images in [0, 1] whose class shifts the pixel means (so labels carry signal)."""
    gen = torch.Generator().manual_seed(seed)
    dim = shape[0] * shape[1]
    protos = torch.rand(n_classes, dim, generator=gen)
    parts = []
    for size in n:
        y = torch.arange(size) % n_classes
        x = (0.7 * protos[y] + 0.3 * torch.rand(size, dim, generator=gen)).clamp(0, 1)
        parts += [x, y]
    return ImageData("tiny", shape, *parts, source="tests")


def without_timing(value: Any) -> Any:
    """``value`` with every wall-clock entry removed (they differ between runs)."""
    if isinstance(value, dict):
        return {
            k: without_timing(v)
            for k, v in value.items()
            if not any(k.endswith(t) for t in TIMING_KEYS)
        }
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


class Interrupted(Exception):
    """Raised by :func:`run_task` right after a checkpoint, as a kill there would stop a run."""


def run_task(
    task: Any,
    cfg: Any,
    path: Any,
    *,
    data: Any = None,
    interrupt_at: int | None = None,
) -> Any:
    """Run (or resume) ``task`` with ``cfg`` in run folder ``path``; returns its results.

    ``interrupt_at``: stop with :class:`Interrupted` after the first checkpoint
    of a step >= that (what survives a kill there).
    """
    import dataclasses

    from discograd.experiments import RunDir, Trainer

    with RunDir(path, dataclasses.asdict(cfg)) as run:
        if interrupt_at is not None:
            save = run.save_checkpoint

            def save_then_stop(phase: str, state: dict, device: Any = None) -> None:
                save(phase, state, device)
                if state["progress"]["step"] >= interrupt_at:
                    raise Interrupted(f"simulated kill after the checkpoint of {phase}")

            run.save_checkpoint = save_then_stop  # type: ignore[method-assign]
        return Trainer(run, quiet=True).run(task, cfg, data=data)


def assert_kill_per_phase_resumes_exactly(
    make_task: Callable[[], Any],
    cfg: Any,
    tmp_path: Any,
    data: Any,
    full_results: Any,
    *,
    phases: int,
    interrupt_at: int,
) -> None:
    """Stop every one of ``phases`` phases once, right after its checkpoint at
    ``interrupt_at`` (run folder ``tmp_path / "part"``), then resume: the results and
    the records equal those of the uninterrupted run in ``tmp_path / "full"``."""
    import dataclasses

    import pytest

    from discograd.experiments import RunDir

    for _ in range(phases):
        with pytest.raises(Interrupted):
            run_task(make_task(), cfg, tmp_path / "part", data=data, interrupt_at=interrupt_at)
    res_part = run_task(make_task(), cfg, tmp_path / "part", data=data)
    full = RunDir(tmp_path / "full", dataclasses.asdict(cfg))
    part = RunDir(tmp_path / "part", dataclasses.asdict(cfg))
    assert without_timing(res_part) == without_timing(full_results)
    assert without_timing(part.records()) == without_timing(full.records())
