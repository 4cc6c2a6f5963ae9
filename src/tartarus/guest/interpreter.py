"""Stateful code-interpreter for `run_code`, one process per context.

Why a separate process: user code must keep state (globals) between calls, may crash or hang
the interpreter, and must see the image's site-packages, so it runs under the normal `python3`
(not -I/-S like the agent) and the agent can simply kill and start another. stdout/stderr are
the process's real fds 1 and 2 (pipes to the agent), unbuffered, so output from `print` and from
subprocesses streams back alike; cells and results travel on a separate control socket.

How it starts: usually forked from the zygote (`zygote.py` calls `serve(fd)`), with the
template's modules already imported; without a zygote, as `python3 -u interpreter.py --fd N`.
Why it imports next to nothing: a context forked from the zygote should answer its first cell
in about a millisecond, so serving needs only what `python3 -c pass` has loaded plus `_ast`:
the control channel is raw length-prefixed messages (no socket or json module), and
`traceback`/`linecache` are loaded only to format an error.

Control messages, each a 4-byte big-endian length and a payload (the agent uses `encode_cell`
and `read_result`, so the format lives in this file only):

  agent -> interpreter:  the UTF-8 source of one cell
  interpreter -> agent:  b"n" (no value) | b"v" + repr | b"e" + error (see `encode_error`)

A SIGINT from the agent aborts the running cell (KeyboardInterrupt) and keeps the state.

Stdlib only, Python >= 3.9, no `from __future__` (it would import a module into every context).
"""

import builtins
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_THIS_FILE = os.path.abspath(__file__)
MAX_VALUE = (1 << 20) - 4096  # the agent sends the repr in a frame header (1 MiB at most)
CELL_SOURCES: "dict[str, str]" = {}  # filename -> source, for tracebacks


class Channel:
    """Messages on the control fd; a partial message survives a KeyboardInterrupt."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read(self) -> "bytes | None":
        while True:
            if len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + size:
                    message = bytes(self.buf[4 : 4 + size])
                    del self.buf[: 4 + size]
                    return message
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk

    def write(self, payload: bytes) -> None:
        view = memoryview(len(payload).to_bytes(4, "big") + payload)
        while view:
            view = view[os.write(self.fd, view) :]


def _text(value: str) -> bytes:
    return value.encode("utf-8", "backslashreplace")


def encode_error(name: str, value: str, traceback_text: str) -> bytes:
    """b"e", then name and value each as a 4-byte length and bytes, then the traceback."""
    parts = [b"e"]
    for item in (_text(name), _text(value)):
        parts += [len(item).to_bytes(4, "big"), item]
    return b"".join([*parts, _text(traceback_text)])


def encode_cell(code: str) -> bytes:
    """The agent's side: one cell as a message."""
    data = code.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


def read_result(recv: "Callable[[int], bytes]") -> "dict[str, Any] | None":
    """The agent's side: one result as {"value", "error"} read with `recv` (a socket's), or
    None if the interpreter is gone."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    try:
        message = exactly(int.from_bytes(exactly(4), "big"))
    except (OSError, EOFError):
        return None
    kind, body = message[:1], message[1:]
    if kind == b"n":
        return {"value": None, "error": None}
    if kind == b"v":
        return {"value": body.decode("utf-8", "replace"), "error": None}
    if kind != b"e":
        return None
    fields = []
    for _ in range(2):
        size = int.from_bytes(body[:4], "big")
        fields.append(body[4 : 4 + size].decode("utf-8", "replace"))
        body = body[4 + size :]
    error = {"name": fields[0], "value": fields[1], "traceback": body.decode("utf-8", "replace")}
    return {"value": None, "error": error}


def _str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<unprintable {type(exc).__name__} object>"


def _format(exc: BaseException) -> str:
    """The traceback as Python prints it, without this file's frames."""
    import linecache
    import traceback

    for filename, source in CELL_SOURCES.items():
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tb = exc.__traceback__
    if isinstance(exc, SyntaxError) and tb is not None and tb.tb_next is None:
        # The cell itself does not parse: no frames of its own, just the caret lines.
        return "".join(traceback.format_exception_only(type(exc), exc))
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == _THIS_FILE:
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return f"{type(exc).__name__}: {_str(exc)}\n"


def run_cell(namespace: "dict[str, object]", code: str, cell: int) -> bytes:
    """Run one cell; return the result message (value repr or error)."""
    import _ast

    filename = f"<cell {cell}>"
    CELL_SOURCES[filename] = code
    linecache = sys.modules.get("linecache")
    if linecache is not None:  # user code that formats its own tracebacks sees the source
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        flags: int = _ast.PyCF_ONLY_AST
        tree = compile(code, filename, "exec", flags, True)
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = tree.body.pop().value
        if tree.body:
            exec(compile(tree, filename, "exec", 0, True), namespace)
        value = None
        if last is not None:
            expression = _ast.Expression(body=last)
            value = eval(compile(expression, filename, "eval", 0, True), namespace)
        if value is None:
            return b"n"
        namespace["_"] = value
        text = _text(repr(value))
    except BaseException as exc:  # user code may raise anything, incl. SystemExit
        return encode_error(type(exc).__name__, _str(exc), _format(exc))
    if len(text) > MAX_VALUE:
        size = f"the value's repr is too large to return ({len(text)} bytes)"
        return encode_error("ValueError", size, "")
    return b"v" + text


def serve(fd: int) -> int:
    """Run cells from the control fd until it closes; 0 at EOF, 1 if the channel broke."""
    channel = Channel(fd)
    # User code runs as __main__ in a fresh module so pickling and `if __name__ == ...` work.
    main_module = type(sys)("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    sys.argv = [""]
    namespace = main_module.__dict__
    cell = 0
    while True:
        try:
            message = channel.read()
            if message is None:
                return 0
            cell += 1
            result = run_cell(namespace, message.decode("utf-8", "surrogatepass"), cell)
            for stream in (sys.stdout, sys.stderr):
                try:  # noqa: SIM105  (no contextlib: a module more in every context)
                    stream.flush()
                except Exception:
                    pass
            channel.write(result)
        except KeyboardInterrupt:
            continue  # an interrupt that arrived between cells: nothing to abort
        except OSError:
            return 1


def main(argv: "list[str]") -> int:
    if "--fd" not in argv:
        sys.stderr.write("usage: interpreter.py --fd N\n")
        return 2
    fd = int(argv[argv.index("--fd") + 1])
    os.set_inheritable(fd, False)
    # Started as a script: our directory is sys.path[0]; the user's code expects the cwd.
    here = os.path.dirname(_THIS_FILE)
    sys.path[:] = [p for p in sys.path if p != here]
    sys.path.insert(0, "")
    return serve(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
