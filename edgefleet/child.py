"""`python -m edgefleet.child PARENT_PID MODULE [ARGS...]`: run `python -m MODULE ARGS...` so that it
dies with its parent (PR_SET_PDEATHSIG on Linux).

Why the child asks for this itself rather than subprocess's `preexec_fn` doing it between fork and
exec: any `preexec_fn` makes subprocess use fork() instead of vfork(), fork() runs gRPC's fork
handlers, and in a parent with gRPC running (the demo, the tests) they restart gRPC's poller thread
inside the child, which then crashes with SIGABRT or SIGSEGV once subprocess closes the poller's
descriptors before exec (grpc/grpc#43055; about 2 spawns in 100 here). A vfork() runs no handlers.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 3


def die_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent dies; False if it already died before we asked."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux/glibc: the parent's finally-blocks still stop the child
    # The parent may have died between our fork and the prctl; we would then never get the signal.
    return os.getppid() == parent_pid


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m edgefleet.child PARENT_PID MODULE [ARGS...]", file=sys.stderr)
        return 2
    parent_pid, module, args = int(argv[0]), argv[1], argv[2:]
    if not die_with_parent(parent_pid):
        return EXIT_PARENT_GONE
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
