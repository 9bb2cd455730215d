"""Compile policy files into the immutable `CompiledPolicy` the request path reads.

`load_policy` reads and validates one file (errors name the file, the line and the key);
`compile_policy` is the pure step from a validated `PolicyFile` to a `CompiledPolicy`: the
content hash, Nemotron's `custom_policy` and `custom_taxonomy` texts, the settings.

The two text renderings follow formats that are not confirmed by a primary source
(docs/guard-models.md, "Custom policies"); each lives in one function named for that
assumption so that it can be corrected in one place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import orjson

from guard_engine.adapters.nemotron import POLICY_PREAMBLE
from guard_engine.errors import ConfigFileError
from guard_engine.policy.compiled import (
    AuditSettings,
    BlockSettings,
    CompiledPolicy,
    InputSettings,
    OutputSettings,
)
from guard_engine.policy.schema import AuditSpec, PolicyFile
from guard_engine.taxonomy import DEFAULT_CATEGORIES
from guard_engine.yaml_model import load_yaml_text, validate

# Bumped when the meaning of a policy file changes without its text changing, so that every
# `name@hash` (and every verdict cached under it) changes with it.
_HASH_VERSION = b"guardline-policy/1\n"


def policy_hash8(raw: PolicyFile) -> str:
    """First 8 hex digits of sha256 over a canonical serialization of the validated policy.

    Canonical: every field with its default filled in, keys sorted, compact JSON. Comments,
    key order, YAML quoting and spelling out a default therefore leave the hash unchanged;
    any change of meaning changes it.
    """
    canonical = orjson.dumps(raw.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(_HASH_VERSION + canonical).hexdigest()[:8]


def frame_custom_policy_unverified_card_format(name: str, description: str, text: str) -> str:
    """Nemotron's `custom_policy` text in the format of the model card's examples.

    UNVERIFIED (docs/guard-models.md, "Custom policies"; integrator reports): the preamble line
    (`nemotron.POLICY_PREAMBLE`, the adapter owns it), the `### Policy` heading and the `Name:` /
    `Description:` lines. Byte-stable by construction (no timestamps, no request data) so that
    SGLang's prefix cache is shared by every request under one policy. THINK mode's extra
    instruction line is the adapter's business.
    """
    one_line = " ".join(description.split())
    return f"{POLICY_PREAMBLE}\n\n### Policy\nName: {name}\nDescription: {one_line}\n\n{text}"


def render_taxonomy_unverified_s_codes(
    kept: Sequence[str], added: Sequence[tuple[str, str]]
) -> str:
    """Nemotron's `custom_taxonomy` text: one `S<n>: <Name>.` line per category.

    UNVERIFIED: the line format copies the taxonomy block of a third-party reconstruction of the
    chat template (docs/guard-models.md, "Prompt layout and caching"). Built-in categories keep
    their S-codes from the default list (suppressing S12 leaves a gap rather than renumbering),
    added categories are numbered after the last built-in one and carry their description after the
    name.
    """
    lines = [f"S{DEFAULT_CATEGORIES.index(name) + 1}: {name}." for name in kept]
    first_new = len(DEFAULT_CATEGORIES) + 1
    for i, (name, description) in enumerate(added):
        desc = " ".join(description.split())
        lines.append(f"S{first_new + i}: {name}." + (f" {desc}" if desc else ""))
    return "\n".join(lines)


def _audit(spec: AuditSpec) -> AuditSettings:
    think = spec.think
    if think.startswith("sampled:"):
        return AuditSettings(
            think="sampled", think_rate=float(think.split(":", 1)[1]), content=spec.content
        )
    if think == "all":
        return AuditSettings(think="all", think_rate=1.0, content=spec.content)
    if think == "flagged":
        return AuditSettings(think="flagged", think_rate=0.0, content=spec.content)
    return AuditSettings(think="off", think_rate=0.0, content=spec.content)


def resolve_shadow(shadow: str, source: str) -> str:
    """A shadow path relative to its policy file, made absolute (as PolicyStore keys files)."""
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(source)), shadow))


def compile_policy(raw: PolicyFile, source: str) -> CompiledPolicy:
    """The runtime form of a validated policy file read from `source`."""
    suppressed = tuple(dict.fromkeys(raw.categories.suppress))
    kept = [c for c in DEFAULT_CATEGORIES if c not in suppressed]
    added = [(a.name, a.description) for a in raw.categories.add]
    edited = bool(suppressed or added)
    return CompiledPolicy(
        name=raw.name,
        description=raw.description,
        hash8=policy_hash8(raw),
        guard=raw.guard,
        mode=raw.mode,
        custom_policy=(
            frame_custom_policy_unverified_card_format(raw.name, raw.description, raw.policy)
            if raw.policy is not None
            else None
        ),
        custom_taxonomy=render_taxonomy_unverified_s_codes(kept, added) if edited else None,
        categories=(*kept, *(name for name, _ in added)),
        suppressed=suppressed,
        input=InputSettings(**raw.input.model_dump()),
        output=OutputSettings(**raw.output.model_dump()),
        on_block=BlockSettings(**raw.on_block.model_dump()),
        on_guard_error=raw.on_guard_error,
        audit=_audit(raw.audit),
        threshold=raw.threshold,
        shadow=resolve_shadow(raw.shadow, source) if raw.shadow is not None else None,
        source=source,
    )


def load_policy(path: str | Path, *, known_guards: Collection[str] | None = None) -> CompiledPolicy:
    """Read, validate and compile one policy file.

    Raises ConfigFileError naming the file, the line and the key for: unreadable files,
    invalid YAML, unknown keys, wrong types, unknown categories, an unknown guard (when
    `known_guards` is given) and a shadow policy file that does not exist.
    """
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigFileError(shown, f"cannot read file: {reason}") from None
    data, lines = load_yaml_text(text, path=shown)
    if not isinstance(data, dict):
        raise ConfigFileError(shown, "a policy file must be a mapping of keys", line=1)
    raw = validate(PolicyFile, data, path=shown, lines=lines)
    if known_guards is not None and raw.guard is not None and raw.guard not in known_guards:
        known = ", ".join(sorted(known_guards)) or "none"
        raise ConfigFileError(
            shown,
            f"unknown guard {raw.guard!r}; known guards: {known}",
            line=lines.get(("guard",)),
            key="guard",
        )
    source = os.path.abspath(shown)
    if raw.shadow is not None:
        shadow = resolve_shadow(raw.shadow, source)
        if shadow == source:
            raise ConfigFileError(
                shown, "a policy cannot shadow itself", line=lines.get(("shadow",)), key="shadow"
            )
        if not os.path.isfile(shadow):
            raise ConfigFileError(
                shown,
                f"shadow policy file not found: {shadow}",
                line=lines.get(("shadow",)),
                key="shadow",
            )
    return compile_policy(raw, source)
