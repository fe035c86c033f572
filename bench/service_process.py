"""Runs the service package named by CHAOS_SERVICE (`services.sender`, ...) exactly as `python -m` does.

The harness starts services through this so that their names stay off the command line: on a shared
machine a `pkill -f services.sender` of someone else's would otherwise stop the soak's senders too.
"""

import os
import runpy

runpy.run_module(os.environ["CHAOS_SERVICE"], run_name="__main__", alter_sys=True)
