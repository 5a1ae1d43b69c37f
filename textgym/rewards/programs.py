"""From an answer's text to the program that runs in the sandbox: code extraction for the code tasks.

Code is taken from markdown fences (even unclosed ones) or from the text minus
surrounding prose; a body-only answer is attached to the sample's signature.
:class:`~textgym.rewards.execution.ExecutionReward` calls :func:`program_for`
on every answer; the code tasks re-export both functions.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Sequence

from textgym.data.base import Sample
from textgym.sandbox import Program

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START = re.compile(r"^(def |async def |class |import |from |@|#|if |for |while |return\b|[A-Za-z_][\w.]*\s*=)")


def extract_code(text: str) -> str:
    """The code in a model's answer: the fenced block(s) if any, else the text minus prose.

    A ```python block wins over other fences; an unclosed fence (the answer
    was cut) runs to the end.  Without fences, prose lines before the first
    line that looks like code, and trailing prose that breaks parsing, are
    dropped.  Returns ``""`` when nothing looks like code.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if blocks:
        python = [b for lang, b in blocks if lang in ("python", "py", "python3")]
        chosen = python or [b for lang, b in blocks if not lang] or [b for _, b in blocks]
        best = next((b for b in chosen if "def " in b), max(chosen, key=len))
        return best.rstrip() + "\n" if best.strip() else ""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, x in enumerate(lines) if x[:1] in (" ", "\t") and x.strip() or _CODE_START.match(x)), None)
    if start is None:
        return ""
    lines = lines[start:]
    while lines and not _compiles_as_code_or_body("\n".join(lines)) and lines[-1][:1] not in (" ", "\t"):
        lines.pop()  # trailing prose ("This function returns ...")
    code = "\n".join(lines).rstrip()
    return code + "\n" if code.strip() else ""


def _compiles_as_code_or_body(code: str) -> bool:
    code = textwrap.dedent(code)
    return _compiles(code) or _compiles("def _body():\n" + textwrap.indent(code, "    "))


@functools.lru_cache(maxsize=4096)
def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _attach(head: str, code: str, indents: Sequence[int]) -> str:
    """``head`` + ``code`` re-indented: the first variant that compiles (else the first).

    Tried in order: the code as written when it is indented (a continuation
    that already fits), then for each indentation ``k``: the whole code
    dedented and indented by ``k``; the first line at ``k`` with the rest as
    written; the first line at ``k`` with the rest dedented to ``k`` / ``k + 4``.
    """
    body = textwrap.dedent(code)
    first_line, _, rest = body.partition("\n")
    _, _, raw_rest = code.partition("\n")
    options = [head + code] if code[:1] in (" ", "\t") else []
    for k in indents:
        pad = " " * k
        options.append(head + textwrap.indent(body, pad))
        options.append(head + pad + first_line.lstrip() + "\n" + raw_rest)
        for extra in (0, 4):
            options.append(head + pad + first_line + "\n" + textwrap.indent(textwrap.dedent(rest), " " * (k + extra)))
    return next((o for o in options if _compiles(o)), options[0])


def program_for(text: str, sample: Sample) -> Program | None:
    """The program an answer stands for (None when it holds no code).

    * the answer defines the entry point -> it is the whole program (the
      problem's imports and helpers run first, as trusted context);
    * otherwise it is the body (generation, repair) or the continuation of
      the given prefix (completion), re-indented to fit.
    """
    meta = sample.meta
    code = extract_code(text)
    if not code.strip():
        return None
    problem, entry = meta["problem"], meta["entry_point"]
    mode = meta.get("mode", "generation")
    if _defines(code, entry):
        program = code
    elif mode == "completion":
        prefix = meta["prefix"]
        given = [x.strip() for x in prefix.splitlines() if x.strip()]
        lines = code.splitlines()
        while given and lines and lines[0].strip() == given[0]:  # the answer repeated the prefix
            given.pop(0)
            lines.pop(0)
        code = "\n".join(lines) + "\n"
        last = next((x for x in reversed(prefix.splitlines()) if x.strip()), "    ")
        level = _indent_of(last) + (4 if last.rstrip().endswith(":") else 0)
        program = _attach(problem + prefix, code, dict.fromkeys([level, 4, 8, 12, 16]))
    else:
        program = _attach(problem, code, (4,))
    # the problem's imports and helpers are trusted context (a bare signature is not valid code: none then)
    return Program(program=program, test=meta["test"], entry_point=entry, context=problem if _compiles(problem) else "")


# -- mutants for repair ---------------------------------------------------------------------
