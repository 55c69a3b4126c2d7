"""The typed vocabularies: the reject reasons the code can give are exactly the ones docs/PROTOCOL.md lists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from protocol.reasons import REASONS

ROOT = Path(__file__).resolve().parents[2]
# The modules that write a reason into a rejected event.
WRITERS = ("commands/model.py", "engine/decide.py", "engine/core.py")


def documented_reasons() -> list[str]:
    """The first column of the protocol reference's "every reason" table (its header row is `reason`)."""
    rows: list[str] = []
    in_table = False
    for line in (ROOT / "docs/PROTOCOL.md").read_text().splitlines():
        if re.match(r"^\|\s*`reason`\s*\|", line):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cell = line.split("|")[1].strip()
            if set(cell) <= set("-: "):
                continue  # the separator row
            m = re.fullmatch(r"`([a-z_]+)`", cell)
            assert m, f"not a reason cell: {cell!r}"
            rows.append(m.group(1))
    return rows


def test_the_protocol_lists_exactly_the_reasons_the_code_has() -> None:
    documented = documented_reasons()
    assert len(documented) == len(set(documented)), "a reason is listed twice"
    assert set(documented) - set(REASONS) == set(), "documented but not in protocol/reasons.py"
    assert set(REASONS) - set(documented) == set(), "in protocol/reasons.py but not documented"


def _written_reasons(path: Path) -> set[str]:
    """Every str literal given as a reason: `_Refuse(reason, ...)`, `Invalid(m, a, reason, ...)`, `F(n, c, reason)`,
    and any `reason=...` keyword."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        index = {"_Refuse": 0, "Invalid": 2, "F": 2}.get(name)
        args = [node.args[index]] if index is not None and len(node.args) > index else []
        args += [k.value for k in node.keywords if k.arg == "reason"]
        found |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def test_every_reason_the_code_writes_is_in_the_vocabulary() -> None:
    """mypy holds this through the Reason type too; this also catches a reason written where a plain str is accepted."""
    events_reasons = {"self_trade", "user", "unfilled", "cancel_all", "market_closed", "market_voided", "lapsed"}
    written = set().union(*(_written_reasons(ROOT / m) for m in WRITERS))
    assert written, "the scan found nothing: it is not looking where reasons are written"
    # order_cancelled / orders_cancelled also have a `reason` field, with its own vocabulary.
    assert written - set(REASONS) - events_reasons == set()
    assert {"internal_error", "malformed", "market_exists", "too_many_fills"} <= written
