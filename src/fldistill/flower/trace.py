"""Timestamps of a deployment's message path, for finding where a round's time goes.

Set ``FLDISTILL_FLOWER_TRACE`` to a file path in the environment of the SuperLink and
SuperNodes (``LocalDeployment(trace=...)`` does) and each stage appends one JSON line:
the ServerApp's push and the last reply of each exchange, the warm executor's launch, and
each ClientApp's start, task start and task end. ``benchmarks/flower/overhead.py`` reads
them. Unset (the default), :func:`mark` does nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

TRACE_ENV = "FLDISTILL_FLOWER_TRACE"


def mark(event: str, **fields: Any) -> None:
    """Append ``{"t", "pid", "event", **fields}`` to the trace file, if one is set.

    One ``write`` of one short line to a file opened with ``O_APPEND``: lines from many
    processes do not interleave.
    """
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "event": event, **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
