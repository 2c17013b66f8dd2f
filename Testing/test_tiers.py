"""The test tiers of conftest.py: the slow list names tests that exist (a renamed test must not
slip into the quick tier unnoticed), and missing data fails in CI instead of skipping."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import SLOW, require

TESTING = Path(__file__).resolve().parent


def test_the_slow_tier_names_existing_tests():
    for module, names in SLOW.items():
        tree = ast.parse((TESTING / f"{module}.py").read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert (names or set()) <= defined, module


@pytest.mark.parametrize("env", [{"CI": "true"}, {"MEDSEGRWKV_REQUIRE_DATA": "1"}, {}])
def test_missing_data_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch, env):
    for name in ("CI", "MEDSEGRWKV_REQUIRE_DATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if env else pytest.skip.Exception
    with pytest.raises(expected, match="is not available"):
        require(tmp_path / "absent")
    assert require(tmp_path) == tmp_path
