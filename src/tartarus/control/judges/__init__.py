"""The admission judges, one per module, in the order the chain runs them.

`BUILTIN` is the fixed part of the chain (authentication context, quota, resources and
runtime, network, classification); plugins come after it, loaded from the entry point
group `tartarus.judges` (`control/plugins.py`), the two examples shipped here included.
"""

from __future__ import annotations

from tartarus.control.judges.classify import Typhon
from tartarus.control.judges.identity import Cerberus
from tartarus.control.judges.network import Styx
from tartarus.control.judges.quota import Minos
from tartarus.control.judges.resources import Rhadamanthus
from tartarus.control.judging import Judge


def builtin() -> list[Judge]:
    return [Cerberus(), Minos(), Rhadamanthus(), Styx(), Typhon()]
