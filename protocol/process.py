"""Process plumbing every role shares: children that die with their parent.

It lives at the bottom because the engine forks a child to write a snapshot,
and `jetbook up`, the bench and the embedded server start children too: all
of them must be gone when their parent is, however it dies.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send the child SIGTERM when its parent dies, however it dies.

    `jetbook up` starts its children in their own sessions (so that Ctrl-C
    reaches only the supervisor); without this, a supervisor killed with
    SIGKILL or by the OOM killer would leave the server and workers running
    headless. libc is looked up here, in the parent, so the child only makes
    one C call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_signal


DIE_WITH_PARENT = _parent_death_signal()
