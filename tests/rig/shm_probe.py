"""A shared-memory reader that runs under the daemon's clock (the rig's LD_PRELOAD shim).

The rig shims only the daemon; a reader of its segment must read the *same* clocks, as every
process on a real host does, so tests/test_shm_truth.py starts this script with the daemon's
environment (LD_PRELOAD, CLOCKSHIM_CTL, CHRONOTICK_BOOT_ID_FILE). Protocol on stdin/stdout,
one line each: any line in → one JSON line out, ``{"ok": true, "r": <now result>}`` or
``{"ok": false, "why": "..."}`` when the segment cannot answer (the caller then asks the
socket, as chronotick-cli does). Standard library only: it imports chronotick_client.shm.
"""

from __future__ import annotations

import json
import sys

from chronotick_client.shm import ShmReader, ShmUnavailable


def main() -> None:
    path = sys.argv[1]
    reader: ShmReader | None = None
    out = sys.stdout
    for _line in sys.stdin:
        try:
            if reader is None:
                reader = ShmReader(path)
            reply = {"ok": True, "r": reader.now()}
        except ShmUnavailable as exc:
            reply = {"ok": False, "why": str(exc)}
            if reader is not None and "closed" in str(exc):
                reader.close()  # a restarted daemon rewrites the file: map it afresh
                reader = None
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
