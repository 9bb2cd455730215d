"""The audit trail as distillation data: which decisions a head may learn from, and their labels.

A head learns the *guard model's* judgement, so a record is used only when a model guard made
it: records of embedded guards, of a cascade's local answers (`<cascade>/local`), degraded
decisions (a fallback guard or none decided) and `skipped` checks are left out - a head must
never be trained on its own answers. The label is the THINK verdict where a THINK re-check
ran (the model's considered answer), else the binary verdict; a record whose THINK verdict
differs from its binary verdict is not used at all but listed for review.

An output record keeps only the answer as content; its prompt is the content of the input
record of the same request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from proxy.audit.record import AuditRecord
from proxy.audit.storage import AuditStorage, AuditStoreUnavailable, open_audit_store
from proxy.config_schema import AuditConfig

# How a cascade guard names the decisions its local head made (`<cascade-name>/local`).
CASCADE_LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Decision:
    """One labelled guard-model decision, ready to embed (a `LabelledText`)."""

    id: str  # the audit record's id
    request_id: str
    time: float
    stage: str  # input | output
    policy: str  # name@hash8
    guard: str
    prompt: str  # the checked prompt, or for an output check the prompt it answered
    response: str | None  # the checked answer (output checks)
    label: int  # 1 unsafe
    categories: tuple[str, ...]


@dataclass(slots=True)
class TrailSelection:
    decisions: list[Decision] = field(default_factory=list)
    disagreements: list[AuditRecord] = field(default_factory=list)  # THINK != binary
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records left out
    read: int = 0  # records of the policy (and tenant) read

    @property
    def without_content(self) -> int:
        return self.skipped["no content stored"]


class TrailUnavailable(Exception):
    """The configured audit store cannot be read (the message says which and why)."""


def read_trail(
    audit: AuditConfig,
    *,
    policy: str,
    tenant: str | None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[AuditRecord]:
    """Every audit record of `policy` (a name: every version; name@hash8: that one) made in
    [since, until) (epoch seconds; None: unbounded), oldest first, from the store the config's
    `audit` section names: the PostgreSQL store at `audit.url` when set, else the SQLite file
    at `audit.path`. The one place distill reads a store."""
    if audit.url:
        return _store_records(audit.url, policy, tenant, since, until)
    path = Path(audit.path)
    if not path.exists():
        raise TrailUnavailable(f"no audit database at {path} (the config's audit.path)")
    return _store_records(str(path), policy, tenant, since, until)


def _store_records(
    target: str, policy: str, tenant: str | None, since: float | None, until: float | None
) -> Iterator[AuditRecord]:
    try:
        store = open_audit_store(target)
    except AuditStoreUnavailable as exc:
        raise TrailUnavailable(str(exc)) from exc
    return _records(store, policy, tenant, since, until)


def _records(
    store: AuditStorage, policy: str, tenant: str | None, since: float | None, until: float | None
) -> Iterator[AuditRecord]:
    with store:
        yield from store.iter_query(since=since, until=until, policy=policy, tenant=tenant)


def made_by_model_guard(guard: str, model_guards: frozenset[str]) -> bool:
    """Whether `guard` (an audit record's guard field) names a decision of a model guard:
    a model guard itself, or a cascade's model guard (`<cascade>/<model-guard>`)."""
    if guard in model_guards:
        return True
    _cascade, slash, answered_by = guard.rpartition("/")
    return bool(slash) and answered_by != CASCADE_LOCAL and answered_by in model_guards


def select_decisions(
    records: Iterable[AuditRecord], model_guards: frozenset[str]
) -> TrailSelection:
    """The usable decisions of a trail read oldest first, and why the others were left out."""
    out = TrailSelection()
    prompts: dict[str, str] = {}  # request id -> the input record's content
    for rec in records:
        out.read += 1
        if rec.stage == "input" and rec.content is not None:
            prompts.setdefault(rec.request_id, rec.content)
        reason = _unusable(rec, model_guards)
        if reason is not None:
            out.skipped[reason] += 1
            continue
        assert rec.content is not None  # _unusable checked it
        think = rec.think_verdict
        if rec.disagreement or (think is not None and think != rec.verdict):
            out.disagreements.append(rec)
            continue
        if rec.stage == "input":
            prompt, response = rec.content, None
        else:
            known = prompts.get(rec.request_id)
            if known is None:
                out.skipped["answer without its prompt (no input record with content)"] += 1
                continue
            prompt, response = known, rec.content
        label = think if think is not None else rec.verdict
        out.decisions.append(
            Decision(
                id=rec.id,
                request_id=rec.request_id,
                time=rec.time,
                stage=rec.stage,
                policy=rec.policy,
                guard=rec.guard,
                prompt=prompt,
                response=response,
                label=1 if label == "unsafe" else 0,
                categories=rec.categories,
            )
        )
    return out


def _unusable(rec: AuditRecord, model_guards: frozenset[str]) -> str | None:
    if rec.verdict not in ("safe", "unsafe"):
        return f"verdict {rec.verdict}"
    if rec.degraded:
        return "degraded (no model guard decided)"
    if not made_by_model_guard(rec.guard, model_guards):
        return "not a model guard's decision (embedded guard or a cascade's local answer)"
    if rec.content is None:
        return "no content stored"
    return None
