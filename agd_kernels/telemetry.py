"""Per-layer telemetry from the five per-tensor sums of agd_kernels.reference.telemetry (docs/telemetry.md).

Everything here works on device tensors and never synchronises: `layer_stats` turns a (tensors, 5)
sums buffer into per-layer statistics, `equilibrium_angular_update` gives the angular update a layer
with weight decay settles at. Copying to the host is the caller's choice (TelemetryWriter, every N
steps).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .reference.telemetry import NUM_SUMS, SUMS

__all__ = ["SUMS", "NUM_SUMS", "layer_stats", "equilibrium_angular_update", "Telemetry", "TelemetryWriter",
           "read_csv", "plot_csv"]


def layer_stats(sums: Tensor) -> dict[str, Tensor]:
    """Per-layer statistics from a (tensors, 5) sums buffer (columns as SUMS), each a (tensors,) tensor.

    weight_norm ‖w‖, grad_norm ‖g‖, update_norm ‖Δw‖, update_ratio ‖Δw‖/‖w‖, grad_cosine
    ⟨w, g⟩/(‖w‖‖g‖), angular_update: the angle between w and w_new in radians.

    The angle is atan2(‖w × w_new‖, ⟨w, w_new⟩) with ‖w × w_new‖² = ‖w‖²‖Δw‖² − ⟨w, Δw⟩² (Lagrange's
    identity, w_new = w + Δw): arccos of ⟨w, w_new⟩/(‖w‖‖w_new‖) would round to 0 in fp32 below ~3e-4 rad,
    where an update/weight ratio of 1e-4 sits. A zero weight gives a ratio of inf (nan for a zero update)
    and a cosine of 0; its angle is 0.
    """
    if sums.dim() != 2 or sums.shape[1] != NUM_SUMS:
        raise ValueError(f"sums must have shape (tensors, {NUM_SUMS}) with columns {SUMS}; got {tuple(sums.shape)}")
    s = sums.double()
    w_sq, g_sq, w_g, d_sq, w_d = s.unbind(1)
    weight_norm, grad_norm, update_norm = w_sq.sqrt(), g_sq.sqrt(), d_sq.sqrt()
    norm_product = weight_norm * grad_norm
    cross = (w_sq * d_sq - w_d * w_d).clamp_min(0).sqrt()
    return {
        "weight_norm": weight_norm,
        "grad_norm": grad_norm,
        "update_norm": update_norm,
        "update_ratio": update_norm / weight_norm,
        "grad_cosine": torch.where(norm_product == 0, torch.zeros_like(w_g), w_g / norm_product),  # NaN stays
        "angular_update": torch.atan2(cross, w_sq + w_d),
    }


def equilibrium_angular_update(lr: float | Tensor, weight_decay: float, momentum: float = 0.0,
                               decoupled: bool = False) -> float | Tensor:
    """The angular update per step that a scale-invariant layer (one feeding a normalisation layer)
    settles at under weight decay (docs/telemetry.md, "Equilibrium"):

      SGD, torch's form (L2 weight decay, momentum μ, dampening 0):  √(2·lr·wd / (1 + μ))
      AdamW (decoupled weight decay, β1 = momentum):                 √(2·lr·wd·(1 − β1) / (1 + β1))
    """
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise ValueError(f"weight_decay must be >= 0 and momentum in [0, 1); got {weight_decay}, {momentum}")
    factor = 2 * weight_decay * ((1 - momentum) / (1 + momentum) if decoupled else 1 / (1 + momentum))
    return (lr * factor).sqrt() if isinstance(lr, Tensor) else math.sqrt(lr * factor)


@dataclass
class Telemetry:
    """One step's telemetry, all on the device: per-layer statistics `layers[stat]` of shape (len(names),),
    layer i being parameter `names[i]` (its name when the optimizer was given named parameters, else its
    index in parameter order), and optimizer-wide scalars (AGD's eta and G, YellowFin's tuned lr ...)."""
    names: list[str | int]
    layers: dict[str, Tensor]
    scalars: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str | int) -> dict[str, Tensor]:
        """The statistics of one layer, as 0-d device tensors."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(f"no layer {name!r}; layers are {self.names}") from None
        return {stat: values[i] for stat, values in self.layers.items()}

    def rows(self) -> list[tuple[str, str, float]]:
        """(layer, statistic, value) on the host, layer "" for optimizer-wide scalars: ONE device-to-host
        copy of everything stacked, so the only sync is the one the caller asked for."""
        stats = list(self.layers)
        parts = [self.layers[s].double().reshape(-1) for s in stats]
        parts += [self.scalars[s].double().reshape(-1) for s in self.scalars]
        host = torch.cat(parts).cpu().tolist() if parts else []
        n = len(self.names)
        out = [(str(name), stat, host[k * n + i]) for k, stat in enumerate(stats) for i, name in enumerate(self.names)]
        out += [("", stat, host[len(stats) * n + k]) for k, stat in enumerate(self.scalars)]
        return out


class TelemetryWriter:
    """Writes telemetry every `every` steps to a CSV file (columns step, layer, stat, value) and/or to
    TensorBoard (`stat/layer` tags; needs the tensorboard package). `write(step, telemetry)` is the only
    place that copies to the host, and it does so on steps that are multiples of `every` only."""

    def __init__(self, csv_path: str | Path | None = None, tensorboard_dir: str | Path | None = None,
                 every: int = 100):
        if csv_path is None and tensorboard_dir is None:
            raise ValueError("TelemetryWriter needs csv_path, tensorboard_dir or both")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int; got {every!r}")
        self.every = every
        self._csv = None
        if csv_path is not None:
            self._csv_file = open(csv_path, "w", newline="")  # noqa: SIM115 (closed in close())
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(["step", "layer", "stat", "value"])
        self._board = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # ImportError names the missing package
            self._board = SummaryWriter(str(tensorboard_dir))

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def write(self, step: int, telemetry: Telemetry) -> bool:
        """Writes `telemetry` if `step` is due; returns whether it did."""
        if not self.due(step):
            return False
        rows = telemetry.rows()
        if self._csv is not None:
            self._csv.writerows((step, layer, stat, repr(value)) for layer, stat, value in rows)
            self._csv_file.flush()
        if self._board is not None:
            for layer, stat, value in rows:
                self._board.add_scalar(f"{stat}/{layer}" if layer else stat, value, step)
        return True

    def close(self) -> None:
        if self._csv is not None:
            self._csv_file.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_csv(path: str | Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """A TelemetryWriter CSV as {stat: {layer: (steps, values)}}."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            steps, values = series.setdefault(row["stat"], {}).setdefault(row["layer"], ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return series


def plot_csv(path: str | Path, out: str | Path, stats: tuple[str, ...] = ("update_ratio", "angular_update",
                                                                             "grad_norm")) -> Path:
    """One panel per statistic of a finished run (log scale, one line per layer); returns `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_csv(path)
    missing = [s for s in stats if s not in series]
    if missing:
        raise ValueError(f"{path} has no {missing}; it has {sorted(series)}")
    fig, axes = plt.subplots(1, len(stats), figsize=(4.5 * len(stats), 3.5), squeeze=False)
    for ax, stat in zip(axes[0], stats):
        for layer, (steps, values) in series[stat].items():
            ax.plot(steps, values, label=layer or stat, linewidth=1)
        ax.set_yscale("log")
        ax.set_title(stat)
        ax.set_xlabel("step")
    if len(series[stats[0]]) <= 12:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
