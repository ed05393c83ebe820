"""Entry point of ``python -m supervisor``."""

from __future__ import annotations

import signal
import sys

# Until the parent's loop installs its handlers, HUP (reload) and TTIN/TTOU (scale) have nothing
# to act on, and their default actions would kill (HUP) or stop (TTIN, TTOU) a supervisor still
# importing: a reload sent right after a start must not end it. A subcommand gets them back.
STARTUP_IGNORED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)

if __name__ == "__main__":
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STARTUP_IGNORED}

    from supervisor.cli import SUBCOMMANDS, main

    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS and sys.argv[1] != "run":
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(main())
