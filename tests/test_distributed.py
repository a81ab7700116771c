"""Training on 2 CPU processes (torchrun, gloo) on real data: ranks agree, equal 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from archdiscover.engine import train

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(
    model="mlp",
    model_args={"in_features": 64, "widths": [48, 48], "out_features": 10},
    dataset="digits",
    optimizer="linbreg",
    lr=0.1,
    momentum=0.9,
    regularizer="l1",
    lam=0.05,
    init_density=0.2,
    target_density=0.3,
    epochs=2,
    batch_size=64,
    impl="foreach",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cfg: dict, run_dir: Path, out: Path, stop_after: int | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "tests" / "ddp_worker.py"),
        json.dumps(cfg),
        str(run_dir),
        str(out),
    ] + ([str(stop_after)] if stop_after is not None else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def flat(state: dict) -> list[torch.Tensor]:
    out = []
    for v in state.values() if isinstance(state, dict) else state:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (dict, list, tuple)):
            out += flat(v if isinstance(v, dict) else dict(enumerate(v)))
    return out


def test_two_processes_agree_and_equal_one_process(tmp_path):
    torchrun(CFG, tmp_path / "ddp", tmp_path / "out")
    r0 = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    # (a) every rank holds bit-identical parameters and optimizer state (v, momentum)
    for a, b in zip(flat(r0["model"]), flat(r1["model"]), strict=True):
        assert torch.equal(a, b)
    sa, sb = flat(r0["optimizer"]["state"]), flat(r1["optimizer"]["state"])
    assert len(sa) == len(sb) > 0 and all(torch.equal(a, b) for a, b in zip(sa, sb, strict=True))
    assert r0["optimizer"]["param_groups"] == r1["optimizer"]["param_groups"]  # lam too
    # (b) the same as one process with the same global batch
    single = train(CFG, tmp_path / "single", progress=False)
    ref = single.model.state_dict()
    for k, v in r0["model"].items():
        assert float((v - ref[k]).abs().max()) <= 1e-5, k
    assert r0["last"]["active_units"] == single.last["active_units"]
    # only rank 0 wrote: one log line per epoch, checkpoints, the final model
    lines = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # each process trained on its half of every batch: the samples add up to the train set
    assert [json.loads(x)["samples"] for x in lines] == [single.last["samples"]] * 2 == [1437] * 2
    assert (tmp_path / "ddp" / "model.pt").is_file()


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    torchrun(CFG, tmp_path / "run", tmp_path / "out", stop_after=1)
    assert not (tmp_path / "run" / "model.pt").exists()
    resumed = train(CFG, tmp_path / "run", progress=False)
    assert resumed.resumed_from == 1
    full = train(CFG, tmp_path / "single", progress=False)
    for k, v in resumed.model.state_dict().items():
        assert float((v - full.model.state_dict()[k]).abs().max()) <= 1e-5, k
