"""Run by ``torchrun`` in tests/test_distributed.py: train, then dump this rank's state.

torchrun --nproc_per_node 2 tests/ddp_worker.py CONFIG_JSON RUN_DIR OUT_DIR [STOP_AFTER]
"""

import json
import pathlib
import sys

import torch

from archdiscover.engine import train


def main() -> None:
    cfg = json.loads(sys.argv[1])
    run_dir, out = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    stop = int(sys.argv[4]) if len(sys.argv) > 4 else None
    res = train(cfg, run_dir, progress=False, stop_after=stop)
    torch.save(
        {
            "model": res.model.state_dict(),
            "optimizer": res.optimizer.state_dict(),
            "world": res.dist.world,
            "last": res.last,
        },
        out / f"rank{res.dist.rank}.pt",
    )


if __name__ == "__main__":
    main()
