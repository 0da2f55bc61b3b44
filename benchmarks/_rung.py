"""One rung of bench_floor_gap.py's ladder, run in a fresh process: the CLI's start-up (lorascope's
modules for the command, argparse, the thread and malloc settings), then only the work the rung
names.  Imports nothing of its own beyond what lorascope loads, so that rungs differ by one piece.

    python benchmarks/_rung.py audit:imports|audit:pass|audit:report|merge-audit:no-sign A B
"""

import os
import sys

from lorascope.cli.main import build_parser, main, tune_malloc
from lorascope.parallel import idle_threads_sleep

idle_threads_sleep()  # before numpy loads, as the CLI does
group, name = sys.argv[1].split(":")
a, b = sys.argv[2], sys.argv[3]
build_parser(group)  # the command's modules and arguments
tune_malloc()
if group == "merge-audit":  # the command with the sign-conflict grid skipped
    from lorascope.merge import pairwise

    pairwise.sign_conflict = lambda d1, d2, opt: (None, 0, True)
    sys.stdout = open(os.devnull, "w")
    main(["merge-audit", a, b, "--json"])
elif name == "pass":
    from lorascope.formats import load
    from lorascope.passes import spectral_pass

    for _ in spectral_pass(load(a), lambda delta, core: None):
        pass
elif name == "report":
    from lorascope.audit import audit_adapter

    audit_adapter(a)
