"""How a sandbox starts the guest agent: `python3 -I -S /.tartarus/start.py --fd 3 ...`.

A stub, because Python never caches the bytecode of the script it runs: started as a script,
the 1500-line agent was compiled at every sandbox start (~12 ms of the guest's start-up).
Imported from here, it loads from the .pyc the host compiled when it installed the guest files
(node/guestfiles.py). The zygote is started first, so its start-up overlaps the agent's
imports (zygote_start.py).
"""

import os
import sys

TYPE_CHECKING = False  # not typing's: the guest imports as little as it can
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if TYPE_CHECKING:
    from tartarus.guest import zygote_start
else:
    import zygote_start

EARLY = zygote_start.early(sys.argv[1:])

if TYPE_CHECKING:
    from tartarus.guest import agent
else:
    import agent

agent.run(EARLY)
