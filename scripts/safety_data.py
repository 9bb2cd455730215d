"""The labelled data the embedded guard is trained and measured on: loading, split units,
splits, category mapping and the texts each record contributes.

Every record is one JSONL row in `data/datasets/` (format in its README). The rules here are
training rules only; the runtime guard never imports them.

Splits keep related rows on one side (issue: translations and near-duplicates must not
straddle train and test):
- a record's *unit* is its normalized prompt text (case-folded, whitespace collapsed), so a
  prompt and its responses, and a prompt repeated in two files (chat_prompts and
  benign_responses share Arena-Hard; xstest and responses share XSTest; chatterbot and
  benign_responses share ChatterBot lines) always fall together;
- MultiJail rows are one unit per source prompt across its ten languages, MGSM rows one unit
  per problem across its languages, JailbreakBench rows one unit per behaviour.
A unit is in `test` if sha256(unit) maps below `test_fraction`, `val` below
`test_fraction + val_fraction`, else `train`. Whole files can be held out (never trained on).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guard_engine.distill.features import hash_unit
from guard_engine.taxonomy import DEFAULT_CATEGORIES

TAXONOMY = frozenset(DEFAULT_CATEGORIES)

PERMISSIVE = {"MIT", "CC-BY-4.0", "Apache-2.0", "BSD-3-Clause", "CC0-1.0", "CC-BY-2.0-FR"}

# The Nemotron / Aegis 2.0 categories the embedded guard can name, from the labels the data
# carries. Categories with too few labelled examples are not judged (documented).
CATEGORY_MAP: dict[str, dict[str, tuple[str, ...]]] = {
    "openai_moderation": {
        "S": ("Sexual",),
        "H": ("Hate/Identity Hate",),
        "V": ("Violence",),
        "HR": ("Harassment",),
        "SH": ("Suicide and Self Harm",),
        "S3": ("Sexual (minor)",),
        "H2": ("Hate/Identity Hate", "Threat"),
        "V2": ("Violence",),
    },
    "multijail": {
        "Violence & incitement": ("Violence",),
        "Discrimination & injustice": ("Hate/Identity Hate",),
        "Hate speech & offensive language": ("Hate/Identity Hate",),
        "Bullying & harassment": ("Harassment",),
        "Non-violent unethical behavior (e.g. lying, cheating, etc.)": ("Immoral/Unethical",),
        "Conspiracy theories & misinformation": ("Political/Misinformation/Conspiracy",),
        "Theft": ("Criminal Planning/Confessions",),
        "Weapons": ("Guns and Illegal Weapons",),
        "Adult content": ("Sexual",),
        "Substance abuse & banned substances": ("Controlled/Regulated Substances",),
        "Terrorism & organized crime": ("Criminal Planning/Confessions", "Violence"),
        "Fraud & deception": ("Fraud/Deception",),
        "Sexual exploitation & human trafficking": ("Criminal Planning/Confessions",),
        "Animal abuse": ("Violence",),
        "Property crime & vandalism": ("Criminal Planning/Confessions",),
        "Soliciting personally identifiable information": ("PII/Privacy",),
        "Self-harm": ("Suicide and Self Harm",),
        "Child abuse": ("Violence",),
    },
    "advbench": {
        "Violence/armed conflict": ("Violence",),
        "Self-harm": ("Suicide and Self Harm",),
        "Impersonation/identity theft": ("Fraud/Deception",),
        "Harassment/abuse/intimidation": ("Harassment",),
        "Discrimination": ("Hate/Identity Hate",),
        "Political manipulation": ("Political/Misinformation/Conspiracy",),
        "Electoral interference": ("Political/Misinformation/Conspiracy",),
        "Privacy loss": ("PII/Privacy",),
        "Addiction": ("Controlled/Regulated Substances",),
        "Sexualisation": ("Sexual",),
        "IP/copyright loss": ("Copyright/Trademark/Plagiarism",),
    },
    "jailbreakbench": {
        "Malware/Hacking": ("Malware",),
        "Physical harm": ("Violence",),
        "Fraud/Deception": ("Fraud/Deception",),
        "Economic harm": ("Economic Harm",),
        "Disinformation": ("Political/Misinformation/Conspiracy",),
        "Sexual/Adult content": ("Sexual",),
        "Privacy": ("PII/Privacy",),
        "Expert advice": ("Unauthorized Advice",),
        "Government decision-making": ("High Risk Gov Decision Making",),
        "Harassment/Discrimination": ("Harassment", "Hate/Identity Hate"),
    },
}
# Hand-written files (the probes in benchmarks/, data/handwritten/) name their categories in
# the guard's taxonomy already.
HANDWRITTEN_SOURCES = {"harm_probe", "response_probe", "supplement"}


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    file: str  # file stem, e.g. "responses"
    source: str  # the record's own source, e.g. "jailbreakbench"
    kind: str  # "prompt" | "response"
    prompt: str
    response: str | None
    label: int  # 1 unsafe
    categories: tuple[str, ...]
    lang: str
    license: str

    @property
    def taxonomy(self) -> tuple[str, ...]:
        """The record's categories in the guard's taxonomy (empty where unknown)."""
        if self.source in HANDWRITTEN_SOURCES:
            return tuple(c for c in self.categories if c in TAXONOMY)
        mapping = CATEGORY_MAP.get(self.source, {})
        out: list[str] = []
        for c in self.categories[:1] if self.source == "jailbreakbench" else self.categories:
            for name in mapping.get(c, ()):
                if name not in out:
                    out.append(name)
        return tuple(out)


def licence_ok(expr: str) -> bool:
    return all(part.strip() in PERMISSIVE for part in expr.split(" AND "))


def load_records(paths: Iterable[Path]) -> tuple[list[Record], dict[str, str], int]:
    """(records, sha256 per file name, rows skipped for their licence)."""
    records: list[Record] = []
    digests: dict[str, str] = {}
    skipped = 0
    for path in sorted(paths):
        raw = path.read_bytes()
        digests[path.name] = hashlib.sha256(raw).hexdigest()
        for line in raw.decode("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if not licence_ok(str(row["license"])):
                skipped += 1
                continue
            records.append(
                Record(
                    id=str(row["id"]),
                    file=path.stem,
                    source=str(row["source"]),
                    kind=str(row["kind"]),
                    prompt=str(row["prompt"]),
                    response=None if row["response"] is None else str(row["response"]),
                    label=1 if row["label"] == "unsafe" else 0,
                    categories=tuple(str(c) for c in row["categories"]),
                    lang=str(row["lang"]),
                    license=str(row["license"]),
                )
            )
    return records, digests, skipped


_SPACE = re.compile(r"\s+")


def normalized(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def split_units(records: list[Record]) -> list[str]:
    """Each record's split unit (see module doc)."""
    mgsm_pos: dict[str, int] = defaultdict(int)
    units: list[str] = []
    for rec in records:
        if rec.source == "multijail":
            units.append(f"multijail-src-{int(rec.id.rsplit('-', 1)[1]) % 315}")
        elif rec.source == "mgsm":
            # the n-th MGSM row of every language is the same problem
            units.append(f"mgsm-{mgsm_pos[rec.lang]}")
            mgsm_pos[rec.lang] += 1
        elif rec.source == "jailbreakbench" and len(rec.categories) > 1:
            units.append(f"jbb-{rec.categories[1]}")
        else:
            units.append("text-" + normalized(rec.prompt))
    return units


def assign_splits(
    records: list[Record],
    *,
    held_out_files: set[str],
    test_fraction: float,
    val_fraction: float,
    excluded_texts: frozenset[str] = frozenset(),
) -> list[str]:
    """`holdout` (a held-out file), `excluded` (its normalized prompt is one of
    `excluded_texts`: the hand-written probes, so that they stay a fair test even where a
    greeting can only be worded one way), `test`, `val` or `train`."""
    out: list[str] = []
    for rec, unit in zip(records, split_units(records), strict=True):
        if rec.file in held_out_files:
            out.append("holdout")
            continue
        if normalized(rec.prompt) in excluded_texts:
            out.append("excluded")
            continue
        u = hash_unit(unit)
        out.append(
            "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        )
    return out
