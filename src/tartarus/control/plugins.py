"""Plugin judges: anything installed under the entry point group `tartarus.judges`.

An entry point names a class (instantiated with no arguments) or a ready callable; either
way it must be callable with an `AdmissionRequest` and return a `Verdict`. Its name in
decisions and error messages is its `name` attribute, else the entry point's name. Plugins
run after the built-in judges, sorted by entry point name so the order is stable. A plugin
that fails to load stops the server from admitting anything (an open door is worse than a
closed one): the error says which plugin.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from tartarus.control.judging import Judge
from tartarus.errors import TartarusError

GROUP = "tartarus.judges"


class PluginError(TartarusError):
    """A judge plugin could not be loaded."""


def load() -> list[Judge]:
    judges: list[Judge] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            judge = obj() if isinstance(obj, type) else obj
        except Exception as exc:
            raise PluginError(
                f"judge plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
            ) from exc
        if not callable(judge):
            raise PluginError(f"judge plugin {ep.name!r} ({ep.value}) is not callable")
        if not isinstance(getattr(judge, "name", None), str):
            try:
                judge.name = ep.name
            except AttributeError:
                raise PluginError(f"judge plugin {ep.name!r} has no name") from None
        judges.append(judge)
    return judges
