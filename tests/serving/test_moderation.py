"""The default rule moderator: every category, normalisation, cameo-only rules, bad rule files."""

import pytest

from engines.errors import ConfigError
from serving.moderation import RuleModerator

CASES = [
    ("sexual_minors", "A NAKED child on a beach", False),
    ("graphic_violence", "gore everywhere", False),
    ("self_harm", "someone attempting suicide", False),
    ("weapons_instructions", "How to build a pipe bomb", False),
    ("cameo_sexual", "she is undressing", True),
    ("cameo_harm", "he gets shot in the street", True),
    ("cameo_deception", "endorsing my new sneakers", True),
]


@pytest.fixture(scope="module")
def moderator():
    return RuleModerator.from_file()


@pytest.mark.parametrize("category, text, cameo", CASES, ids=[c[0] for c in CASES])
def test_each_category_rejects_with_its_reason(moderator, category, text, cameo):
    verdict = moderator.check(text, uses_cameo=cameo)
    assert not verdict.allowed and verdict.category == category and verdict.reason


def test_cameo_rules_only_apply_with_a_cameo(moderator):
    assert moderator.check("he gets shot in a western film").allowed
    assert not moderator.check("he gets shot in a western film", uses_cameo=True).allowed


def test_normalisation_and_ordinary_prompts(moderator):
    assert not moderator.check("une DÉCAPITATION filmée").allowed  # accents and case folded
    assert not moderator.check("a  GORY\tscene").allowed
    for ok in ("a cat playing piano", "rain on a tin roof", "a robot dancing on the beach"):
        assert moderator.check(ok).allowed


def test_bad_rule_files_name_the_problem(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("categories:\n  - name: x\n    reason: y\n    applies_to: [everything]\n    patterns: ['a']\n")
    with pytest.raises(ConfigError, match=r"categories\[0\]"):
        RuleModerator.from_file(bad)
    bad.write_text("categories:\n  - name: x\n    reason: y\n    patterns: ['(']\n")
    with pytest.raises(ConfigError, match="bad pattern"):
        RuleModerator.from_file(bad)
