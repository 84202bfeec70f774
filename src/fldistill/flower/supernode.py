"""``flower-supernode`` with Flower's fixed waits capped (:mod:`fldistill.flower.flwrpatch`).

    FLDISTILL_FLOWER_POLL_S=0.2 python -m fldistill.flower.supernode [flower-supernode's arguments]

Unset, the cap defaults to 0.2 s here (starting this entry point is asking for it).
"""

from __future__ import annotations

import sys

from fldistill.flower.flwrpatch import DEFAULT_POLL_S, poll_seconds, shorten_waits


def main() -> None:
    """Patch the waits, then run Flower's own ``flower-supernode``."""
    shorten_waits(poll_seconds() or DEFAULT_POLL_S, supernode=True)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
