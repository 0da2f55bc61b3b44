# Hand-written (safety): user regexes that could backtrack without bound are refused before matching.
"""Which regular expressions are safe to match: the rule for PEFT's `rank_pattern` / `alpha_pattern`
keys, which come from a user's file and are matched with Python's backtracking `re`.

A key is analysed once, from its parse tree (`re._parser`, `sre_parse` before Python 3.11), and
refused with the reason when matching it could take time exponential (or a high power) in the
length of a module name:

* a key longer than `MAX_LENGTH` characters;
* a repeat (`*`, `+`, `{m,n}` with n > 1) whose body holds another repeat: `(a+)+`, `(.*a){20}`;
* a repeat whose body holds an alternation with two branches that can start with the same
  character or match the empty string: `(a|a)*`, `(\\d|1)+`, `(x|)*` (a branch starting with "any
  character" overlaps every other branch);
* more than `MAX_UNBOUNDED` unbounded repeats (`*`, `+`, `{m,}`): each one multiplies the work
  of a failing match by up to the module name's length;
* a backreference (`\\1`, `(?P=name)`), whose matching is not bounded by any such rule.

Plain module paths never reach this (they are looked up, not matched), and the keys PEFT users
write (`.*\\.q_proj`, `model\\.layers\\.\\d+\\.mlp\\..*`, `layers\\.(0|1|2)\\.`) pass.  The rule is
conservative: it refuses some keys that would in fact match quickly (`(a|ab)*`), never the
reverse for the shapes above.  The parser has already merged one-character alternatives into a
class (`(\\d|1)+` is `[\\d1]+`) and common prefixes out of branches (`(ab|ac)*` is `(a(b|c))*`).
"""

from __future__ import annotations

import importlib
from typing import Any

try:  # Python 3.11+
    _sre: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - Python 3.10
    _sre = importlib.import_module("sre_parse")

MAX_LENGTH = 1000
MAX_UNBOUNDED = 4
_ANY = None  # a first-character set that may be any character

# Possessive repeats and atomic groups (Python 3.11+) still backtrack inside until they first
# match, so they count as repeats and groups.
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", _sre.MAX_REPEAT)}
_ATOMIC = getattr(_sre, "ATOMIC_GROUP", None)
_ZERO_WIDTH = {_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT}


def backtracking_risk(pattern: str) -> str | None:
    """Why matching `pattern` could backtrack without bound (module docstring), or None.
    Raises re.error for an invalid pattern."""
    if len(pattern) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters"
    tree = _sre.parse(pattern)
    why = _nested(list(tree), inside_repeat=False)
    if why:
        return why
    unbounded = _count_unbounded(list(tree))
    if unbounded > MAX_UNBOUNDED:
        return (
            f"has {unbounded} unbounded repeats (*, +, {{m,}}); at most {MAX_UNBOUNDED} are allowed, "
            "as matching time grows as a power of the module name's length with each one"
        )
    return None


def _children(op: Any, av: Any) -> list[list]:
    """The sub-sequences of one parse-tree node."""
    if op in _REPEATS:  # (min, max, body)
        return [list(av[2])]
    if op == _sre.SUBPATTERN:  # (group, add_flags, del_flags, body)
        return [list(av[3])]
    if op == _sre.BRANCH:  # (None, [branch, ...])
        return [list(b) for b in av[1]]
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):  # (direction, body)
        return [list(av[1])]
    if op == _ATOMIC:  # body
        return [list(av)]
    if op == _sre.GROUPREF_EXISTS:  # (group, yes, no)
        return [list(b) for b in av[1:] if b is not None]
    return []


def _nested(seq: list, inside_repeat: bool) -> str | None:
    """The first problem in `seq`: a repeat under a repeat, an overlapping alternation under a
    repeat, a backreference."""
    for op, av in seq:
        if op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            return "uses a backreference, whose matching time is not bounded"
        repeats = op in _REPEATS and av[1] > 1
        if repeats and inside_repeat:
            return "nests a repeat inside a repeat (as in (a+)+), which can backtrack exponentially"
        if op == _sre.BRANCH and inside_repeat and _branches_overlap([list(b) for b in av[1]]):
            return (
                "repeats an alternation whose branches can match the same text (as in (a|a)*), "
                "which can backtrack exponentially"
            )
        for child in _children(op, av):
            why = _nested(child, inside_repeat or repeats)
            if why:
                return why
    return None


def _count_unbounded(seq: list) -> int:
    n = 0
    for op, av in seq:
        if op in _REPEATS and av[1] == _sre.MAXREPEAT:
            n += 1
        n += sum(_count_unbounded(child) for child in _children(op, av))
    return n


def _branches_overlap(branches: list[list]) -> bool:
    seen: set[str] = set()
    for branch in branches:
        first, nullable = _first(branch)
        if nullable or first is _ANY or first & seen:
            return True
        seen |= first
    return False


def _first(seq: list) -> tuple[set[str] | None, bool]:
    """(characters a match of `seq` can start with, None for any; whether it can match "")."""
    out: set[str] = set()
    for op, av in seq:
        first, nullable = _first_one(op, av)
        if first is _ANY:
            return _ANY, False
        out |= first
        if not nullable:
            return out, False
    return out, True


def _first_one(op: Any, av: Any) -> tuple[set[str] | None, bool]:
    if op == _sre.LITERAL:
        return {chr(av).lower()}, False
    if op in _ZERO_WIDTH:
        return set(), True
    if op == _sre.IN:
        return _charset(av), False
    if op in _REPEATS:
        first, nullable = _first(list(av[2]))
        return first, nullable or av[0] == 0
    if op == _ATOMIC:
        return _first(list(av))
    if op == _sre.SUBPATTERN:
        return _first(list(av[3]))
    if op == _sre.BRANCH:
        out: set[str] = set()
        any_nullable = False
        for b in av[1]:
            first, nullable = _first(list(b))
            if first is _ANY:
                return _ANY, False
            out |= first
            any_nullable = any_nullable or nullable
        return out, any_nullable
    return _ANY, False  # ANY, NOT_LITERAL, CATEGORY, GROUPREF, ...


def _charset(items: Any) -> set[str] | None:
    """The characters of a [...] class, or None (any) for negated, category or wide classes."""
    out: set[str] = set()
    for op, av in items:
        if op == _sre.LITERAL:
            out.add(chr(av).lower())
        elif op == _sre.RANGE and av[1] - av[0] < 256:
            out.update(chr(c).lower() for c in range(av[0], av[1] + 1))
        else:
            return _ANY
    return out
