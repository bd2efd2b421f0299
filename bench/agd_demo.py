"""`python -m bench.agd_demo`: AGD trains fully connected nets of every depth with no learning rate.

A check of the AGD paper's claim (arXiv 2304.05187) that AGD trains networks of any depth without
tuning, on data that needs no download: scikit-learn's bundled 8x8 digits (1,797 images, 10
classes; 80% train, 20% test). For each depth (default 2, 4, 8, 16) a bias-free MLP of width 128,
hidden ReLUs scaled by √2 and the MSE loss against √C·one-hot (the authors' harness, docs/agd.md
§8) is trained from the same batches by
  - agd_kernels.AGD after AGD.init_weights(): no learning rate, nothing tuned;
  - torch.optim.Adam(lr=1e-3) and torch.optim.SGD(lr=0.1), at PyTorch's default init.
Writes <out>/agd_demo_training.png (train loss and accuracy per epoch and depth),
<out>/agd_demo_eta.png (AGD's eta per step and depth) and <out>/agd_demo.csv (the final table),
and prints the table. AGD runs with telemetry=True: every --telemetry-every steps a TelemetryWriter
(agd_kernels.telemetry, docs/telemetry.md) writes its per-layer statistics, eta and G to
<out>/agd_demo_telemetry_depth<D>.csv, and <out>/agd_demo_telemetry.png plots eta and each layer's
update/weight ratio per depth.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import agd_kernels
from agd_kernels import _backends
from agd_kernels.telemetry import TelemetryWriter, read_csv

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
OPTIMIZERS = ("AGD", "Adam(lr=1e-3)", "SGD(lr=0.1)")


class FCN(torch.nn.Module):
    """depth bias-free Linear layers: in -> width -> ... -> width -> classes."""

    def __init__(self, depth: int, width: int, d_in: int, classes: int):
        super().__init__()
        dims = [d_in] + [width] * (depth - 1) + [classes]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            # ReLU halves the second moment; √2 restores it, so depth does not shrink the signal
            x = F.relu(layer(x)) * math.sqrt(2)
        return self.layers[-1](x)


def load_digits_split(seed: int):
    """(x_train, y_train, x_test, y_test): pixels standardised with the training set's mean and std
    (one channel, as the authors normalise images per channel)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(x))
    train, test = perm[:n_train], perm[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def targets(y, classes: int):
    """√C·one-hot: each output's target has the norm √d_L the AGD theory assumes."""
    return F.one_hot(y, classes).float() * math.sqrt(classes)


@torch.no_grad()
def evaluate(model, x, y, classes: int) -> tuple[float, float]:
    out = model(x)
    return F.mse_loss(out, targets(y, classes)).item(), (out.argmax(1) == y).float().mean().item()


def train(optimizer_name: str, depth: int, data, args) -> dict:
    """One run; returns per-epoch train loss/accuracy (epoch 0 = before training), AGD's etas, test accuracy."""
    x_train, y_train, x_test, y_test = data
    classes = int(y_train.max()) + 1
    torch.manual_seed(args.seed + depth)  # the same default init for Adam and SGD at each depth
    model = FCN(depth, args.width, x_train.shape[1], classes)
    writer = None
    if optimizer_name == "AGD":
        opt = agd_kernels.AGD(model.named_parameters(), telemetry=True)
        opt.init_weights()  # orthogonal, scaled to √(out/in): the init AGD's step size is derived for
        args.out.mkdir(parents=True, exist_ok=True)  # train() is also called without main()
        writer = TelemetryWriter(csv_path=telemetry_csv(args.out, depth), every=args.telemetry_every)
    elif optimizer_name.startswith("Adam"):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss0, acc0 = evaluate(model, x_train, y_train, classes)
    history = dict(loss=[loss0], acc=[acc0])
    etas, step = [], 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            loss = F.mse_loss(model(x_train[batch]), targets(y_train[batch], classes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            eta = opt.step()
            if optimizer_name == "AGD":
                etas.append(eta)  # a 0-d tensor: read once at the end, not synchronised per step
                if writer.due(step):  # the statistics are built only on the steps written
                    writer.write(step, opt.telemetry())
            step += 1
        loss, acc = evaluate(model, x_train, y_train, classes)
        history["loss"].append(loss)
        history["acc"].append(acc)
    history["eta"] = torch.stack(etas).tolist() if etas else []
    history["test_acc"] = evaluate(model, x_test, y_test, classes)[1]
    if writer is not None:
        writer.close()
    return history


def telemetry_csv(out: Path, depth: int) -> Path:
    return out / f"agd_demo_telemetry_depth{depth}.csv"


def plot(results: dict, args) -> tuple[Path, Path]:
    from matplotlib.figure import Figure

    depths = args.depths
    fig = Figure(figsize=(3.2 * len(depths), 6), layout="constrained")
    axes = fig.subplots(2, len(depths), squeeze=False)
    for col, depth in enumerate(depths):
        for name, color in zip(OPTIMIZERS, ("C0", "C1", "C2")):
            h = results[(depth, name)]
            axes[0, col].plot(h["loss"], color=color, label=name)
            axes[1, col].plot([100 * a for a in h["acc"]], color=color, label=name)
        axes[0, col].set_title(f"depth {depth}")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylim(0, 100)
        axes[1, col].set_xlabel("epoch")
    axes[0, 0].set_ylabel("train loss (MSE)")
    axes[1, 0].set_ylabel("train accuracy (%)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"digits, width {args.width}, batch {args.batch_size}: AGD with no learning rate vs Adam and SGD",
                 fontsize=10)
    training = args.out / "agd_demo_training.png"
    fig.savefig(training, dpi=110)

    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for depth in depths:
        ax.plot(results[(depth, "AGD")]["eta"], label=f"depth {depth}", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("eta (AGD's automatic step size)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    eta = args.out / "agd_demo_eta.png"
    fig.savefig(eta, dpi=110)
    return training, eta, plot_telemetry(args)


def plot_telemetry(args) -> Path:
    """Per depth, from the TelemetryWriter CSVs: eta, and each layer's update/weight ratio ‖Δw‖/‖w‖. AGD
    moves each weight by (eta/depth)·sv in Frobenius norm (docs/agd.md §5), so near its orthogonal init the
    ratio is about (eta/depth)/√min(in, out): the hidden layers share one line."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    depths = args.depths
    fig = Figure(figsize=(3.2 * len(depths), 5.5), layout="constrained")
    axes = fig.subplots(2, len(depths), squeeze=False, sharex="col")
    for col, depth in enumerate(depths):
        series = read_csv(telemetry_csv(args.out, depth))
        steps, values = series["eta"][""]
        axes[0, col].plot(steps, values, color="C0", linewidth=1)
        axes[0, col].set_title(f"depth {depth}")
        axes[0, col].set_ylim(bottom=0)
        layers = series["update_ratio"]
        colors = colormaps["viridis"].resampled(max(len(layers), 2))
        for k, (layer, (steps, values)) in enumerate(layers.items()):
            axes[1, col].plot(steps, values, color=colors(k), linewidth=1,
                              label=layer if k in (0, len(layers) - 1) else None)
        axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel("step")
        axes[1, col].legend(fontsize=7, title="first/last layer", title_fontsize=7)
    axes[0, 0].set_ylabel("eta")
    axes[1, 0].set_ylabel("update / weight norm per layer")
    fig.suptitle(f"AGD telemetry (every {args.telemetry_every} steps): eta and per-layer update ratios", fontsize=10)
    path = args.out / "agd_demo_telemetry.png"
    fig.savefig(path, dpi=110)
    return path


def parser() -> argparse.ArgumentParser:
    def positive(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
        return value

    ap = argparse.ArgumentParser(prog="python -m bench.agd_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", nargs="+", type=positive, default=[2, 4, 8, 16], metavar="D",
                    help="numbers of Linear layers (default 2 4 8 16)")
    ap.add_argument("--width", type=positive, default=128)
    ap.add_argument("--epochs", type=positive, default=30)
    ap.add_argument("--batch-size", type=positive, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--telemetry-every", type=positive, default=5, metavar="N",
                    help="write AGD's telemetry every N steps (default 5)")
    # One thread: these 128-wide matmuls are too small to split, and on a loaded 2-core machine two
    # threads ran depth 16 for 3 epochs in 9.6 s against 0.21 s with one (OpenMP threads waiting).
    ap.add_argument("--threads", type=positive, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = load_digits_split(args.seed)
    backend = _backends.resolve("agd_step_", torch.device("cpu"), torch.float32, "auto")[0]
    print(f"digits: {len(data[0])} train / {len(data[2])} test images; width {args.width}, batch {args.batch_size}, "
          f"{args.epochs} epochs; AGD on the agd_kernels '{backend}' backend, torch {torch.__version__}", flush=True)
    results, start = {}, time.perf_counter()
    for depth in args.depths:
        for name in OPTIMIZERS:
            results[(depth, name)] = train(name, depth, data, args)
    elapsed = time.perf_counter() - start

    header = ["depth", "optimizer", "train loss", "train acc %", "test acc %", "mean eta (last epoch)"]
    table = []
    steps_per_epoch = math.ceil(len(data[0]) / args.batch_size)
    for depth in args.depths:
        for name in OPTIMIZERS:
            h = results[(depth, name)]
            eta = sum(h["eta"][-steps_per_epoch:]) / steps_per_epoch if h["eta"] else None
            table.append([depth, name, f"{h['loss'][-1]:.4f}", f"{100 * h['acc'][-1]:.1f}",
                          f"{100 * h['test_acc']:.1f}", "" if eta is None else f"{eta:.4f}"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in table:
        print("| " + " | ".join(map(str, line)) + " |")
    with open(args.out / "agd_demo.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header] + table)
    training, eta, telemetry = plot(results, args)
    agd_acc = [results[(d, "AGD")]["acc"][-1] for d in args.depths]
    # "Trains" = at least 90% training accuracy (chance is 10%) after the same epochs as the others.
    verdict = "holds" if min(agd_acc) >= 0.9 else "does NOT hold"
    print(f"claim 'AGD trains every depth with no learning rate' {verdict} here: AGD train accuracy "
          + ", ".join(f"{100 * a:.1f}% at depth {d}" for d, a in zip(args.depths, agd_acc)))
    print(f"{elapsed:.1f} s; wrote {training}, {eta}, {telemetry}, {args.out / 'agd_demo.csv'} and "
          f"{telemetry_csv(args.out, '<D>')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
