"""Error codes come from one enum (medsegrwkv.errors.ErrorCode): every error the backend raises
names its code there, every code in it is used, and a code reads as its plain string in JSON and
in comparisons, as the worker protocol and the Slicer module expect."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.engine.protocol import ProtocolError, error_message

PACKAGE = Path(__file__).resolve().parents[1] / "backend" / "medsegrwkv"


def _code_arguments() -> list[tuple[str, ast.expr | None]]:
    """(place, code expression or None) for every MedSegError/ProtocolError/error_message call."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            keyword = next((k.value for k in node.keywords if k.arg == "code"), None)
            position = {"MedSegError": 1, "ProtocolError": 0, "error_message": 1}.get(name)
            if position is not None:
                code = keyword or (node.args[position] if len(node.args) > position else None)
                found.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", code))
    return found


def test_every_error_names_a_member_of_the_enum():
    arguments = _code_arguments()
    literal = [place for place, code in arguments if code is None or isinstance(code, ast.Constant)]
    assert arguments and literal == []


def test_every_code_in_the_enum_is_used():
    used = {node.attr for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "ErrorCode"}
    assert used == {code.name for code in ErrorCode}


def test_codes_read_as_plain_strings():
    error = MedSegError("The ROI is empty.", code=ErrorCode.BAD_ROI)
    assert error.code == "bad_roi" and str(error) == "The ROI is empty." and f"{error.code}" == "bad_roi"
    assert json.loads(json.dumps(error_message(3, error.code, error.message)))["code"] == "bad_roi"
    assert ProtocolError(ErrorCode.BUSY, "busy").code == "busy"
    with pytest.raises(ValueError, match="not_a_code"):
        MedSegError("x", code="not_a_code")
