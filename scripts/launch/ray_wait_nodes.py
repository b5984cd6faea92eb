"""Wait until the Ray cluster at ADDRESS has NODES live nodes (the Slurm launch scripts run it
after starting the head and the workers); exit 1 with a message after TIMEOUT seconds.

    python scripts/launch/ray_wait_nodes.py ADDRESS NODES [TIMEOUT]
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    address, wanted = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + float(sys.argv[3] if len(sys.argv) > 3 else 300)
    import ray

    while True:  # the head may not be up yet: ray.init raises until its GCS answers
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            break
        except ConnectionError as exc:
            if time.monotonic() > deadline:
                print(f"no Ray head answers at {address}: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)
    alive = 0
    while time.monotonic() <= deadline:
        alive = sum(node["Alive"] for node in ray.nodes())
        if alive >= wanted:
            print(f"Ray at {address}: {alive} nodes up")
            return 0
        time.sleep(2)
    print(f"Ray at {address}: {alive} of {wanted} nodes joined in time", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
