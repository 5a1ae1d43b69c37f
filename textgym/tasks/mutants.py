"""Deterministic single-bug mutants of a Python function, for the code repair task.

Operators (each edits the source text at AST positions, so the rest of the
code keeps its formatting and comments):

* ``operator_swap`` -- ``+``/``-``, ``*``/``//``, ``/``/``*``, ``%``/``//``, ``and``/``or``;
* ``comparison`` -- ``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``in``/``not in``, ``is``/``is not``;
* ``off_by_one`` -- an integer literal ``n`` becomes ``n + 1`` (or ``n - 1`` for ``n > 1``);
* ``negate_condition`` -- ``if c:`` / ``while c:`` becomes ``if not (c):``;
* ``drop_line`` -- one simple statement of a block with several is removed.

:func:`mutants` lists every mutant of a function in a seeded order; the repair
task keeps the first one that really fails the tests.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BINOP_SWAP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "//", ast.FloorDiv: "*", ast.Div: "*", ast.Mod: "//"}
BINOP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%"}
CMP_SWAP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
            ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"),
            ast.NotIn: ("not in", "in"), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is")}  # fmt: skip
BOOL_SWAP = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Continue, ast.Break)


@dataclass(frozen=True)
class Mutant:
    """One injected bug: the mutated source and what was changed."""

    source: str
    operator: str
    line: int  #: 1-based line of the change in the mutated function's source
    description: str


class _Source:
    """Line/column arithmetic on a source text (AST columns are UTF-8 byte offsets)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = np.cumsum([0] + [len(x) for x in self.lines]).tolist()

    def offset(self, line: int, col: int) -> int:
        raw = self.lines[line - 1].encode("utf-8")[:col].decode("utf-8", "replace")
        return self.starts[line - 1] + len(raw)

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset))

    def replace(self, start: int, end: int, new: str) -> str:
        return self.text[:start] + new + self.text[end:]


def _between(src: _Source, left: ast.AST, right: ast.AST, old: str, new: str) -> str | None:
    """Replace the operator ``old`` found between two operands (skipping parentheses and spaces)."""
    start, end = src.span(left)[1], src.span(right)[0]
    segment = src.text[start:end]
    core = segment.replace("(", " ").replace(")", " ")
    if " ".join(core.split()) != old:
        return None
    at = segment.find(old.split()[0])
    last = segment.rfind(old.split()[-1]) + len(old.split()[-1])
    return src.replace(start + at, start + last, new)


def _sites(src: _Source, tree: ast.AST, first_line: int) -> Iterator[tuple[str, int, str, str]]:
    """(operator, line, mutated source, description) for every applicable site at/after ``first_line``."""
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if not isinstance(block, list) or len(block) < 2:
                continue
            for stmt in block:
                if isinstance(stmt, SIMPLE_STATEMENTS) and stmt.lineno >= first_line:
                    lines = src.lines[stmt.lineno - 1 : stmt.end_lineno]
                    start, end = src.starts[stmt.lineno - 1], src.starts[stmt.end_lineno]
                    code = "".join(lines).strip()
                    if code and src.text[src.offset(stmt.lineno, stmt.col_offset):end].strip() == code:
                        yield "drop_line", stmt.lineno, src.replace(start, end, ""), f"dropped: {code[:60]}"
        if line < first_line:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
            old, new = BINOP_TEXT[type(node.op)], BINOP_SWAP[type(node.op)]
            out = _between(src, node.left, node.right, old, new)
            if out:
                yield "operator_swap", line, out, f"{old} -> {new}"
        elif isinstance(node, ast.BoolOp):
            old, new = BOOL_SWAP[type(node.op)]
            out = _between(src, node.values[0], node.values[1], old, new)
            if out:
                yield "operator_swap", line, out, f"{old} -> {new}"
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                old, new = CMP_SWAP[type(op)]
                out = _between(src, left, right, old, new)
                if out:
                    yield "comparison", line, out, f"{old} -> {new}"
                left = right
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value < 10**6:
            new_value = node.value - 1 if node.value > 1 and node.value % 2 == 0 else node.value + 1
            start, end = src.span(node)
            if src.text[start:end] == str(node.value):
                yield "off_by_one", line, src.replace(start, end, str(new_value)), f"{node.value} -> {new_value}"
        if isinstance(node, (ast.If, ast.While)):
            start, end = src.span(node.test)
            negated = src.replace(start, end, f"not ({src.text[start:end]})")
            yield "negate_condition", line, negated, "condition negated"


def mutants(source: str, first_line: int = 1, seed: int | str = 0) -> list[Mutant]:
    """Every distinct, syntactically valid single-site mutant of ``source``, in a seeded order.

    Only sites on or after ``first_line`` (1-based) change, e.g. the body of
    a function whose signature and docstring must stay intact.

    Example:
        >>> [m.description for m in mutants("def f(a, b):\\n    return a + b\\n")]
        ['+ -> -']
    """
    src = _Source(source)
    tree = ast.parse(source)
    seen, out = {source}, []
    for operator, line, text, description in _sites(src, tree, first_line):
        if text in seen:
            continue
        seen.add(text)
        try:
            ast.parse(text)
        except SyntaxError:
            continue
        out.append(Mutant(text, operator, line, description))
    digest = hashlib.sha256(f"{seed}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:8], "big")).permutation(len(out))
    return [out[i] for i in order]
