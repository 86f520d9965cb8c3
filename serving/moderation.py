"""Moderation: every prompt is checked before a job is queued; nothing rejected reaches a stage.

`Moderator` is the interface; `RuleModerator` is the default, with categories, reasons and
patterns from a YAML file (deploy/moderation/rules.yaml). A classifier-backed moderator can
replace it behind the same interface.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import yaml

from engines.errors import ConfigError

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "deploy" / "moderation" / "rules.yaml"
SCOPES = ("prompt", "cameo")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str = ""
    reason: str = ""


ALLOWED = Verdict(True)


class Moderator(ABC):
    @abstractmethod
    def check(self, text: str, *, uses_cameo: bool = False) -> Verdict:
        """Whether `text` may be generated (and, when it may not, the category and the reason)."""


@dataclass(frozen=True)
class Rule:
    category: str
    reason: str
    scopes: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]


def normalise(text: str) -> str:
    """Case-fold, strip accents and collapse whitespace, so 'NÚDE\\n' matches 'nude'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.casefold().split())


class RuleModerator(Moderator):
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> RuleModerator:
        path = Path(path) if path else DEFAULT_RULES
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError("moderation.rules_file", f"cannot read {path}: {e}") from None
        rules = []
        for i, cat in enumerate(doc.get("categories") or []):
            key = f"moderation.rules_file:categories[{i}]"
            scopes = frozenset(cat.get("applies_to") or ["prompt"])
            if not scopes <= set(SCOPES) or not cat.get("name") or not cat.get("reason"):
                raise ConfigError(key, f"needs name, reason and applies_to within {SCOPES}")
            try:
                patterns = tuple(re.compile(p, re.IGNORECASE) for p in cat.get("patterns") or [])
            except re.error as e:
                raise ConfigError(key, f"bad pattern: {e}") from None
            rules.append(Rule(cat["name"], cat["reason"], scopes, patterns))
        return cls(rules)

    def check(self, text: str, *, uses_cameo: bool = False) -> Verdict:
        norm = normalise(text)
        for rule in self.rules:
            if "prompt" not in rule.scopes and not (uses_cameo and "cameo" in rule.scopes):
                continue
            if any(p.search(norm) for p in rule.patterns):
                return Verdict(False, rule.category, rule.reason)
        return ALLOWED
