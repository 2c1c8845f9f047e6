"""Weight-space interpolation between the base retriever and an adapted run's checkpoint (WiSE-FT):
w = base + alpha * (tuned - base), written as a sentence-transformers directory and scored on a BEIR
dataset in float32.

    python benchmarks/interpolate.py runs/adapt-track/scifact/dream ../shared/data/beir/scifact --alpha 0.5

RUN is a `dreamir adapt` output directory (its model/ gives the layout, its checkpoint the tuned weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreamir.checkpoints import problem_with
from dreamir.data.beir import load_beir
from dreamir.models import MINILM, resolve_model
from dreamir.trainer import CHECKPOINTS, STATE_FILE
from dreamir.workflow import evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a dreamir adapt output directory")
    parser.add_argument("beir", help="BEIR directory to evaluate on")
    parser.add_argument("--alpha", type=float, default=0.5, help="0: the base, 1: the checkpoint")
    parser.add_argument("--checkpoint", default="step-000080", help="checkpoint under work/train/checkpoints")
    parser.add_argument("--base", default=MINILM, help="the retriever the run started from")
    parser.add_argument("--out", type=Path, default=None, help="where to write the interpolated model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.run / "work" / "train" / CHECKPOINTS / args.checkpoint
    problem = problem_with(checkpoint, STATE_FILE)
    if problem:
        raise SystemExit(f"{checkpoint}: {problem}")
    state = torch.load(checkpoint / STATE_FILE, weights_only=True, map_location="cpu")
    tuned = {name.removeprefix("retriever.backbone."): v for name, v in state["parameters"].items()}
    base = load_file(Path(resolve_model(args.base)) / "model.safetensors")
    out = args.out or args.run / f"interpolated_{args.checkpoint}_{args.alpha:g}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(args.run / "model", out)
    layout = load_file(out / "model.safetensors")
    mixed = {
        n: (base[n].float() + args.alpha * (tuned[n].float() - base[n].float())).contiguous() for n in layout
    }
    save_file(mixed, out / "model.safetensors")
    metrics = evaluate_model(str(out), load_beir(args.beir), show_progress=False)
    print(json.dumps({"run": str(args.run), "checkpoint": args.checkpoint, "alpha": args.alpha, **metrics}))


if __name__ == "__main__":
    main()
