"""A distilled head file: embedded-guard heads trained for one policy from a guard model's own
verdicts (`guardline distill`), with the metadata a cascade guard and an operator need.

One `.npz` file holds both parts, so weights and the numbers that justify them cannot drift
apart: the arrays `save_heads` writes (so `load_heads` and the embedded guard read the weights
unchanged) plus `distill.meta`, a JSON document. `FORMAT_VERSION` is bumped whenever the
meaning of a field changes; a reader refuses versions it does not know instead of guessing.

The thresholds are the cascade's: a score at or below `low` is answered locally as safe, at or
above `high` locally as unsafe, anything between goes to the model guard. `distill` chooses
them on held-out decisions so that local answers agree with the model guard at least
`target_agreement` of the time.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guard_engine.backends.embedded_head import HeadSet, load_heads, save_heads

FORMAT = "guardline-distilled-head"
FORMAT_VERSION = 1
META_KEY = "distill.meta"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score <= low: safe, answered locally. Score >= high: unsafe, answered locally.

    The ends of the scale mean "never": `low` = 0.0 answers nothing locally as safe (a head's
    score is never 0), and `high` = 1.0 nothing as unsafe - a float32 sigmoid rounds to
    exactly 1.0 for logits above ~17, so 1.0 cannot also mean "at or above 1.0".
    `MODEL_GUARD_ONLY` (0, 1) sends every check to the model guard."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= low <= high <= 1, got {self}")

    def local_label(self, score: float) -> str | None:
        """ "safe" / "unsafe" when the score is confident enough to answer locally, else None."""
        if score <= self.low and self.low > 0.0:
            return "safe"
        if score >= self.high and self.high < 1.0:
            return "unsafe"
        return None


MODEL_GUARD_ONLY = Thresholds(low=0.0, high=1.0)


@dataclass(frozen=True, slots=True)
class DistillMeta:
    policy: str  # name@hash8 of the policy whose decisions were the labels
    tenant: str | None  # the tenant the trail was restricted to, if any
    window: tuple[str, str]  # ISO 8601 UTC times of the first and last decision read
    counts: dict[str, int]  # e.g. train / heldout / input / output / unsafe / base rows
    agreement: dict[str, float]  # held-out agreement with the model guard, per label/category
    prompt_thresholds: Thresholds  # input checks
    response_thresholds: Thresholds  # output checks (whole answers and hold-back windows)
    target_agreement: float  # what the thresholds were chosen for, e.g. 0.99
    local_share: dict[str, float]  # held-out share answered locally at those thresholds
    created: str  # ISO 8601 UTC
    extra: dict[str, Any] = field(default_factory=dict)  # free-form report details

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = FORMAT
        data["version"] = FORMAT_VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> DistillMeta:
        try:
            data = json.loads(text)
            if data.pop("format", None) != FORMAT:
                raise ValueError("not a distilled head")
            version = data.pop("version", None)
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"format version {version!r}; this guardline reads {FORMAT_VERSION}"
                )
            data["window"] = tuple(data["window"])
            data["prompt_thresholds"] = Thresholds(**data["prompt_thresholds"])
            data["response_thresholds"] = Thresholds(**data["response_thresholds"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{source}: malformed distilled head metadata: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DistilledHead:
    heads: HeadSet
    meta: DistillMeta
    fingerprint: str  # sha256 of the file, first 12 hex characters: names this exact head


def save_distilled(heads: HeadSet, meta: DistillMeta, path: Path) -> str:
    """Write the head file atomically (a cascade may be reading the old one); return its
    fingerprint."""
    buffer = io.BytesIO()
    tmp = path.with_name(path.name + ".tmp")
    save_heads(heads, tmp)
    with np.load(tmp, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[META_KEY] = np.asarray(meta.to_json(), dtype=np.str_)
    np.savez_compressed(buffer, **arrays)
    payload = buffer.getvalue()
    tmp.write_bytes(payload)
    tmp.replace(path)
    return hashlib.sha256(payload).hexdigest()[:12]


def load_distilled(path: Path) -> DistilledHead:
    """Read a head file written by `save_distilled`; ValueError when it is not one."""
    payload = path.read_bytes()
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        if META_KEY not in data.files:
            raise ValueError(f"{path}: not a distilled head file (no {META_KEY})")
        meta = DistillMeta.from_json(str(data[META_KEY]), source=str(path))
    heads = load_heads(path)
    return DistilledHead(
        heads=heads, meta=meta, fingerprint=hashlib.sha256(payload).hexdigest()[:12]
    )
