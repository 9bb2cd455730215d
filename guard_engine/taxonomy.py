"""Nemotron 3.5 Content Safety's default taxonomy (docs/guard-models.md, "Nemotron taxonomy").

Names are exactly as the model emits them. S24 is unverified: NVIDIA's notebooks list 23
categories in some places and 24 in others; it is kept so that a verdict naming it is
recognized, and `test_assumption_taxonomy_has_s24_economic_harm` names the assumption.
"""

from __future__ import annotations

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "Violence",
    "Sexual",
    "Criminal Planning/Confessions",
    "Guns and Illegal Weapons",
    "Controlled/Regulated Substances",
    "Suicide and Self Harm",
    "Sexual (minor)",
    "Hate/Identity Hate",
    "PII/Privacy",
    "Harassment",
    "Threat",
    "Profanity",
    "Needs Caution",
    "Other",
    "Manipulation",
    "Fraud/Deception",
    "Malware",
    "High Risk Gov Decision Making",
    "Political/Misinformation/Conspiracy",
    "Copyright/Trademark/Plagiarism",
    "Unauthorized Advice",
    "Illegal Activity",
    "Immoral/Unethical",
    "Economic Harm",
)
