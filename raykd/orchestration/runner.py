"""Run stages as Ray Train ``TorchTrainer`` runs, or reuse them if they already ran.

:func:`ensure_stages` is the stage graph's single entry: given stage requests
(:class:`~raykd.plan.stages.StageRequest`, as :mod:`raykd.plan` builds them: a typed config
and, for KD, the identity of its teacher stage) it returns the finished :class:`StageRecord` of
each, training only those with no finished run of the same identity. The stages still to train run
as one *chain*: one ``TorchTrainer`` whose workers train them one after another (a KD stage
after its teacher), so a seed's 14 stages pay Ray Train's ~15 s start/stop once instead of 14
times. Each stage keeps its own identity, directory, checkpoints and MLflow child run
(:mod:`raykd.orchestration.chain` plans and records a chain; the typed values it sends to the
workers are in :mod:`raykd.orchestration.messages`).
"""

from __future__ import annotations

import contextlib
import dataclasses

from raykd.orchestration.chain import train_chain
from raykd.orchestration.cluster import say, worker_groups
from raykd.orchestration.context import StageContext, announce, in_this_store
from raykd.orchestration.identity import StageRecord, device_class
from raykd.orchestration.stage_runs import retire_damaged_run, stage_tags
from raykd.plan.stages import StageRequest
from raykd.train.distributed import rank_batch

__all__ = ["StageContext", "StageRequest", "ensure_stages"]


def _reuse_line(ctx: StageContext, sid: str, req: StageRequest, record: StageRecord) -> None:
    """Say once that a stage trained by an earlier job is reused (not one this job trained)."""
    if sid in ctx.announced:
        return
    ctx.announced.add(sid)
    if any(u["stage_id"] == sid and u["trained"] for u in ctx.store.usage(ctx.parent_run_id)):
        return
    teacher = ctx.store.get(req.teacher_id) if req.teacher_id else None
    tags = stage_tags(req.cfg, sid, req.teacher_id, teacher.kind if teacher else None) | req.tags
    psnr = ((record.metrics or {}).get("val") or {}).get("psnr")
    result = f", val PSNR {psnr:.2f} dB" if psnr is not None else ""
    say(f"{announce(ctx, sid, req.cfg, tags)}: reused (trained by an earlier job{result})")


def ensure_stages(
    requests: list[StageRequest],
    ctx: StageContext,
    tune_report: bool = False,
    eval_splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, StageRecord]:
    """Finished records of every requested stage, by stage id; missing ones trained as a chain.

    A KD request's teacher must be finished already or requested earlier in ``requests``.
    Stages are locked in the store while they train, so a concurrent trial needing one waits
    and then reuses it.
    """
    unique: dict[str, StageRequest] = {}
    for req in requests:
        unique.setdefault(req.stage_id, req)
    records: dict[str, StageRecord] = {}

    def reuse(sid: str) -> bool:
        record, damaged = ctx.store.get_intact(sid, device_class(unique[sid].cfg.device))
        if damaged:
            say(f"WARNING: {damaged}; training stage {sid} again")
            retire_damaged_run(ctx.tracking, sid, damaged)
        if record is None:
            return False
        _reuse_line(ctx, sid, unique[sid], record)
        records[sid] = in_this_store(record, ctx)
        ctx.store.log_use(sid, "reused", job=ctx.parent_run_id)
        return True

    pending = [sid for sid in unique if not reuse(sid)]
    if not pending:
        return records
    for sid in pending:  # refused here, not retried by Ray Train on every rank
        cfg = unique[sid].cfg
        rank_batch(
            cfg.data.batch_size, 1 if ctx.local else ctx.resources.for_kind(cfg.kind).workers
        )
    with contextlib.ExitStack() as stack:
        for sid in sorted(pending):  # one global order: no deadlock between trials
            stack.enter_context(ctx.store.lock(sid))
        pending = [sid for sid in pending if not reuse(sid)]
        # One Ray Train run per stretch of the chain with the same worker count (workers per kind).
        kinds = [(sid, unique[sid].cfg.kind) for sid in pending]
        for ids, res in worker_groups(kinds, ctx.resources) if pending else []:
            part = dataclasses.replace(ctx, resources=res)
            train_chain(
                [(sid, unique[sid]) for sid in ids], records, part, tune_report, eval_splits
            )
    return records
