"""Data-parallel training under torchrun: a real 2-process run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from robuniv.models import load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys
    from pathlib import Path

    import torch
    from torch.utils.data import TensorDataset

    from robuniv.models import ModelSpec, build_model
    from robuniv.train import TrainConfig, train_model

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.rand(40, 1, 16, 16, generator=g) * 0.5 + 0.25
    sign = (1 - 2 * labels).float().view(-1, 1, 1, 1)
    images[:, :, :8] += 0.15 * sign
    images[:, :, 8:] -= 0.15 * sign
    data = TensorDataset(images, labels)

    def model():
        spec = ModelSpec(
            "resnet18", num_classes=2, variant="cifar", width=0.0625, in_channels=1,
            mean=(0.5,), std=(0.5,),
        )
        return build_model(spec, seed=0)

    try:
        train_model(
            model(),
            data,
            TrainConfig(epochs=2, batch_size=15, eps=0.5, seed=0),
            checkpoint=out / "bad.pt",
            resume_state=out / "bad_state.pt",
        )
    except ValueError as error:
        bad_batch = str(error)
    else:
        bad_batch = None

    trained = model()
    history = train_model(
        trained,
        data,
        TrainConfig(epochs=2, batch_size=16, eps=0.5, seed=0, lr=0.05),
        checkpoint=out / "model.pt",
        resume_state=out / "state.pt",
    )
    weights = [p.detach().double().sum().item() for p in trained.parameters()]
    result = {"bad_batch": bad_batch, "history": history, "weights": weights}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    """
)


def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(out),
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    assert sorted(p.name for p in out.glob("*.pt")) == ["model.pt"]
    model, ckpt = load_checkpoint(out / "model.pt")
    meta = ckpt["robuniv"]
    assert ckpt["epoch"] == 2
    assert [e["epoch"] for e in meta["history"]] == [1, 2]
    assert meta["train_config"]["batch_size"] == 16
    assert model.spec.width == 0.0625

    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        message = result["bad_batch"]
        assert message is not None and "15" in message and "2" in message
        assert "world size" in message
    # metrics were all-reduced: every rank logs the same global numbers
    for key in ("loss", "clean_acc", "adv_acc", "lr"):
        assert [e[key] for e in results[0]["history"]] == [e[key] for e in results[1]["history"]]
        assert [e[key] for e in results[0]["history"]] == [e[key] for e in meta["history"]]
    # DDP kept the replicas in step, and the checkpoint holds the unwrapped model's weights
    assert results[0]["weights"] == results[1]["weights"]
    saved = [p.detach().double().sum().item() for p in model.parameters()]
    assert saved == results[0]["weights"]
    for entry in meta["history"]:
        # 40 images over 2 ranks: accuracies are multiples of 1/40
        assert abs(entry["clean_acc"] * 40 - round(entry["clean_acc"] * 40)) < 1e-9
