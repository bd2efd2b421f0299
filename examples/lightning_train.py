"""Lightning with an agd_kernels optimizer: a small LightningModule trained on CPU.

    python examples/lightning_train.py [--optimizer AdamW|AGD] [--steps 40]

`configure_optimizers` returns the optimizer and a per-step LambdaLR warmup. Lightning calls
`optimizer.step(closure)`; agd_kernels runs the closure (forward and backward) first, as torch.optim
does. For AGD the schedule scales the group's `lr` factor (default 1.0), which multiplies its step.
The task: classify which of 4 fixed centres a noisy 16-dimensional point came from.
"""
from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

import agd_kernels as ak

CLASSES, FEATURES = 4, 16


def blobs(size: int) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, FEATURES, generator=gen) * 2
    labels = torch.randint(0, CLASSES, (size,), generator=gen)
    return torch.utils.data.TensorDataset(centres[labels] + torch.randn(size, FEATURES, generator=gen), labels)


class Classifier(L.LightningModule):
    def __init__(self, optimizer: str):
        super().__init__()
        self.optimizer_name = optimizer
        self.net = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, CLASSES))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())  # for the printout only (one host sync per step)
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "AGD":
            opt = ak.AGD(self.named_parameters(), bias_mode="follow")  # biases follow their weight
            opt.init_weights()
        else:
            opt = ak.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def main(argv=None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=["AdamW", "AGD"], default="AdamW")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    model = Classifier(args.optimizer)
    loader = torch.utils.data.DataLoader(blobs(1024), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    first, last = model.losses[0], sum(model.losses[-5:]) / len(model.losses[-5:])
    print(f"{args.optimizer}: loss {first:.3f} -> {last:.3f} (mean of the last 5) over {trainer.global_step} steps")
    return first, last


if __name__ == "__main__":
    main()
