"""Cancellation has one primitive, anyio cancel scopes (issue 17 item 5): a raw ``Task.cancel()`` pierces anyio's
shields (``to_thread.run_sync``'s, a shielded upstream close), so a disconnect could free a bcrypt limiter slot while
the hash kept running. This reads src/ and keeps the raw kind out: no ``uncancel``, no ``.cancel()`` on a task, and
each ``asyncio.timeout`` (a raw ``Task.cancel`` at its deadline) says why it never wraps shielded work."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "fastgate"
TASKLIKE = re.compile(r"task|watcher|fut", re.IGNORECASE)


def _calls(attr: str) -> list[tuple[Path, int, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                found.append((path, node.lineno, ast.unparse(node.func.value)))
    return found


def test_no_task_is_cancelled_raw_and_nothing_uncancels() -> None:
    assert _calls("uncancel") == []
    cancels = _calls("cancel")
    assert cancels  # the scan sees the scopes' cancel() calls
    raw = [f"{path.relative_to(SRC)}:{line} {receiver}.cancel()" for path, line, receiver in cancels]
    tasks = [entry for entry, (_, _, receiver) in zip(raw, cancels, strict=True) if _names_a_task(receiver)]
    assert tasks == []


def _names_a_task(receiver: str) -> bool:
    """``self._task`` or ``watcher``, not ``group.cancel_scope`` (judged by the receiver's last name)."""
    return bool(TASKLIKE.search(receiver.rsplit(".", 1)[-1]))


def test_every_asyncio_timeout_says_why_it_cannot_cut_shielded_work() -> None:
    unexplained = []
    for path, line, _ in _calls("timeout"):
        lines = path.read_text().splitlines()
        if "asyncio.timeout(" not in lines[line - 1]:
            continue
        before = "\n".join(lines[max(0, line - 4) : line - 1])
        if "Task.cancel" not in before:
            unexplained.append(f"{path.relative_to(SRC)}:{line}")
    assert unexplained == []
