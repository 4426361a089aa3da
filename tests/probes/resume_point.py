"""D19 probe: every rank resumes from the checkpoint rank 0 chose.

Started by ``torch.distributed.run --nproc_per_node 2``; rank r looks at the output folder
``argv[1 + r]``, standing in for one shared folder seen through different attribute caches
(rank 1's view does not show the newest checkpoint's completion marker yet). Prints one JSON
line per rank: the checkpoint ``hpctune.train.resume.resume_point`` returned.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import torch.distributed as tdist

    from hpctune.train import dist, resume

    tdist.init_process_group("gloo")
    chosen = resume.resume_point(sys.argv[1 + dist.rank()])
    print(json.dumps({"rank": dist.rank(), "chosen": chosen.name if chosen else None}), flush=True)
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
