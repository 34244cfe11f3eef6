"""Child processes that end when the process that started them ends, however it ends (SIGKILL included)."""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ending_with_me(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets `sig` when this process ends. A child left behind would go
    on working for nobody: an RQ slot taking its node's jobs while no agent publishes the node (beside the
    slots of a restarted agent), or a node agent after `vramq up` was killed. Linux only; elsewhere the
    parent's own shutdown is all there is."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def arrange() -> None:  # in the child, between fork and exec: the setting survives exec
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent ended before the line above took effect
            os._exit(1)

    return arrange
