"""Integer expressions of a design description: ``"2 * queues + (queues > 1) + 1"``, ``"16'd{mtu}"``.

A description's sizes and parameter values may depend on the target's options (``queues=``, ``mtu=``).
They are written as Python-like integer expressions over option names, evaluated here from the
syntax tree with a closed set of operators and functions, never with ``eval``: a description file is
input, not code.
"""

from __future__ import annotations

import ast
import operator
import string
from collections.abc import Callable, Mapping

_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
}
_COMPARE: dict[type[ast.cmpop], Callable[[int, int], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def pow2ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def clog2(n: int) -> int:
    """Verilog's $clog2."""
    return 0 if n <= 1 else (n - 1).bit_length()


FUNCTIONS: dict[str, Callable[..., int]] = {"max": max, "min": min, "pow2ceil": pow2ceil, "clog2": clog2}


class ExpressionError(ValueError):
    """An expression that does not parse, names an unknown option, or does not give an integer."""


def evaluate(expr: str | int, names: Mapping[str, int]) -> int:
    """The value of ``expr`` (an int is itself) with ``names`` bound; comparisons give 0 or 1."""
    if isinstance(expr, bool) or not isinstance(expr, (int, str)):
        raise ExpressionError(f"{expr!r} is not an integer expression")
    if isinstance(expr, int):
        return expr
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{expr!r} does not parse: {exc.msg}") from None
    return _value(tree.body, expr, names)


def _value(node: ast.expr, text: str, names: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ExpressionError(f"{text!r}: unknown name {node.id!r} (known: {known})")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        right = _value(node.right, text, names)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExpressionError(f"{text!r}: division by zero")
        return _BINARY[type(node.op)](_value(node.left, text, names), right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand, text, names)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _value(node.left, text, names)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _value(comp, text, names)
            if not _COMPARE[type(op)](left, right):
                return 0
            left = right
        return 1
    if isinstance(node, ast.IfExp):
        return _value(node.body if _value(node.test, text, names) else node.orelse, text, names)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords):
        return int(FUNCTIONS[node.func.id](*(_value(a, text, names) for a in node.args)))
    raise ExpressionError(f"{text!r}: {ast.unparse(node)!r} is not allowed (integers, option names, + - * // % "
                          f"<< >> & | ^, comparisons, x if c else y, {', '.join(sorted(FUNCTIONS))})")


def render(template: str | int, names: Mapping[str, int]) -> str:
    """``template`` with every ``{expr}`` or ``{expr:format}`` replaced (``"48'h{mac:012x}"``); an int is itself."""
    if isinstance(template, int):
        return str(template)
    out: list[str] = []
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ExpressionError(f"{template!r}: {exc}") from None
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if conversion:
            raise ExpressionError(f"{template!r}: conversions (!{conversion}) are not supported")
        value = evaluate(field, names)
        try:
            out.append(format(value, spec or "d"))
        except ValueError as exc:
            raise ExpressionError(f"{template!r}: format {spec!r}: {exc}") from None
    return "".join(out)
