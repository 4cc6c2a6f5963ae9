"""Stateful code-interpreter child for `run_code`, one process per context.

Why a separate process: user code must keep state (globals) between calls, may crash or hang
the interpreter, and must see the image's site-packages, so it runs under the normal `python3`
(not -I/-S like the agent) and the agent can simply kill and restart it. stdout/stderr are the
process's real fds 1 and 2 (pipes to the agent), so output from `print` and from subprocesses
streams back alike; commands and results travel on a separate control socket (`--fd N`).

Stdlib only, Python >= 3.9.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import linecache
import os
import socket
import sys
import traceback
import types
from typing import TYPE_CHECKING, Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if TYPE_CHECKING:
    from tartarus.guest import protocol
else:
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    import protocol

    # Keep our helper module and directory out of the user's import namespace.
    del sys.modules["protocol"]
    sys.path[:] = [p for p in sys.path if p != _HERE]
    sys.path.insert(0, "")

_THIS_FILE = os.path.abspath(__file__)


def _user_traceback(exc: BaseException) -> str:
    """Format `exc` without the frames that belong to this file."""
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == _THIS_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error(exc: BaseException, tb_text: str) -> dict[str, Any]:
    return {"name": type(exc).__name__, "value": str(exc), "traceback": tb_text}


def run_cell(namespace: dict[str, Any], code: str, cell: int) -> dict[str, Any]:
    """Run one cell; return the result header (value repr or error)."""
    filename = f"<cell {cell}>"
    # Register the source so tracebacks can show the offending lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename=filename, mode="exec")
    except SyntaxError as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        return {"type": "result", "value": None, "error": _error(exc, text)}
    last: ast.expr | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last_stmt = tree.body.pop()
        assert isinstance(last_stmt, ast.Expr)
        last = last_stmt.value
    try:
        if tree.body:
            exec(compile(tree, filename, "exec"), namespace)
        value: Any = None
        if last is not None:
            expr = ast.Expression(body=last)
            value = eval(compile(expr, filename, "eval"), namespace)
        if value is None:
            return {"type": "result", "value": None, "error": None}
        namespace["_"] = value
        return {"type": "result", "value": repr(value), "error": None}
    except BaseException as exc:  # user code may raise anything, incl. SystemExit
        return {"type": "result", "value": None, "error": _error(exc, _user_traceback(exc))}


def main(argv: list[str]) -> int:
    if "--fd" not in argv:
        sys.stderr.write("usage: interpreter.py --fd N\n")
        return 2
    fd = int(argv[argv.index("--fd") + 1])
    ctl = socket.socket(fileno=fd)
    ctl.set_inheritable(False)
    # User code runs as __main__ in a fresh module so pickling and `if __name__ == ...` work.
    main_mod = types.ModuleType("__main__")
    main_mod.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_mod
    sys.argv = [""]
    namespace = main_mod.__dict__
    cell = 0
    while True:
        try:
            frame = protocol.recv_frame(ctl)
            if frame is None:
                return 0
            header, _ = frame
            if header.get("op") != "run":
                protocol.send_frame(
                    ctl, {"type": "result", "value": None, "error": _bad_op(header)}
                )
                continue
            cell += 1
            result = run_cell(namespace, str(header.get("code", "")), cell)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            try:
                protocol.send_frame(ctl, result)
            except protocol.ProtocolError as exc:  # e.g. a gigantic repr
                err = {"name": "ValueError", "value": str(exc), "traceback": ""}
                protocol.send_frame(ctl, {"type": "result", "value": None, "error": err})
        except KeyboardInterrupt:
            # An interrupt that arrived between cells: nothing to abort.
            continue
        except (OSError, protocol.ProtocolError):
            return 1


def _bad_op(header: dict[str, Any]) -> dict[str, Any]:
    return {"name": "ProtocolError", "value": f"unknown op {header.get('op')!r}", "traceback": ""}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
