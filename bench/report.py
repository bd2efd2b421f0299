"""Results of a benchmark run: derived metrics, the stdout table, CSV rows and the PNG chart."""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass, field

import torch

from .providers import FLOOR, TELEMETRY
from .timing import summary


@dataclass
class Row:
    """One (parameter set, dtype, algorithm, provider) case; `status` is ok, unavailable or failed."""
    preset: str
    n_tensors: int
    numel: int
    dtype: str
    algorithm: str
    provider: str
    peer: bool
    status: str
    reason: str = ""
    times: list[float] = field(default_factory=list)
    bytes_per_param: int = 0
    bandwidth: float = float("nan")  # bytes/s of the in-place probe interleaved with this case
    read_bandwidth: float = float("nan")  # bytes/s of the read-only probe, likewise
    speedups: dict[str, float] = field(default_factory=dict)  # peer name -> peer time / this time

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def case(self) -> tuple[str, str, str]:
        return self.preset, self.dtype, self.algorithm

    def quantiles(self) -> tuple[float, float, float]:
        return summary(self.times)

    def params_per_s(self) -> float:
        return self.numel / self.quantiles()[0]

    def bytes_per_s(self) -> float:
        return self.bytes_per_param * self.params_per_s()


def add_speedups(rows: list[Row]) -> None:
    """Each ok row's ratio against every ok peer of its case (>1: this row is faster)."""
    for row in rows:
        if not row.ok:
            continue
        for peer in rows:
            if peer.ok and peer.peer and peer.case == row.case and peer is not row:
                row.speedups[peer.provider] = peer.quantiles()[0] / row.quantiles()[0]


def telemetry_costs(rows: list[Row]) -> str:
    """One line per case and backend that ran with and without telemetry: the median step time it adds."""
    plain = {(row.case, row.provider): row for row in rows if row.ok}
    lines = []
    for row in rows:
        base = plain.get((row.case, row.provider.removesuffix(TELEMETRY)))
        if row.ok and row.provider.endswith(TELEMETRY) and base is not None:
            on, off = row.quantiles()[0], base.quantiles()[0]
            lines.append(f"  {row.preset}, {row.dtype}, {row.algorithm}, {base.provider}: {off * 1e3:.3f} -> "
                         f"{on * 1e3:.3f} ms/step ({100 * (on / off - 1):+.1f}%)")
    return "telemetry on (the update kernels also sum per-layer statistics):\n" + "\n".join(lines) if lines else ""


def count(n: int) -> str:
    """124.44M, 3.6k, 17."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _peers(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.provider for r in rows if r.ok and r.peer))


def table(rows: list[Row]) -> str:
    """Rows grouped by (parameter set, dtype); one speedup column per peer provider that ran."""
    peers = _peers(rows)
    head = (f"{'algorithm':10s} {'provider':19s} {'ms/step':>9s} {'[p20, p80]':>19s} {'Mparam/s':>9s} "
            f"{'B/param':>7s} {'GB/s':>7s} {'bw GB/s':>7s} {'%bw':>5s} {'rd GB/s':>7s}"
            + "".join(f" {'vs ' + p:>17s}" for p in peers))
    out, group, sizes = [], None, None
    for row in rows:
        if (row.preset, row.dtype) != group:
            group = (row.preset, row.dtype)
            out += ["", f"== {row.preset}, {row.dtype}", head]
        if (row.n_tensors, row.numel) != sizes:  # AGD steps only the rank >= 2 tensors of a set
            sizes = (row.n_tensors, row.numel)
            out.append(f"-- {row.n_tensors} tensors, {count(row.numel)} params")
        prefix = f"{row.algorithm:10s} {row.provider:19s}"
        if not row.ok:
            out.append(f"{prefix} {row.status}: {row.reason}")
            continue
        med, p20, p80 = (x * 1e3 for x in row.quantiles())
        gbs, bw = row.bytes_per_s() / 1e9, row.bandwidth / 1e9
        ratios = "".join(f" {row.speedups[p]:>16.2f}x" if p in row.speedups else f" {'':>17s}" for p in peers)
        out.append(f"{prefix} {med:9.3f} {f'[{p20:.3f}, {p80:.3f}]':>19s} {row.params_per_s() / 1e6:9.1f} "
                   f"{row.bytes_per_param:7d} {gbs:7.2f} {bw:7.2f} {100 * gbs / bw:4.0f}% "
                   f"{row.read_bandwidth / 1e9:7.2f}{ratios}")
    return "\n".join(out).lstrip("\n")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """HEAD of the checkout bench/ lives in, '+dirty' with uncommitted changes (read-only git calls)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        # --no-optional-locks: status must not refresh (write) the index of a checkout others work in
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, str]:
    """What every CSV row is tagged with: machine, thread count, versions, git commit."""
    import agd_kernels

    return {
        "run_id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores)",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "agd_kernels": agd_kernels.__version__,
        "git_commit": _git_commit(),
    }


def header(env: dict[str, str]) -> str:
    gpu = f", {env['gpu']}" if env["gpu"] else ""
    return (f"machine: {env['cpu']}{gpu}; {env['threads']} torch threads on {env['device']}\n"
            f"torch {env['torch']}, triton {env['triton']}, agd_kernels {env['agd_kernels']}, "
            f"python {env['python']}, git {env['git_commit']}")


CSV_FIELDS = ["run_id", "host", "cpu", "gpu", "device", "threads", "python", "torch", "triton", "agd_kernels",
              "git_commit", "preset", "n_tensors", "n_params", "dtype", "algorithm", "provider", "status",
              "reason", "reps", "median_ms", "p20_ms", "p80_ms", "params_per_s", "bytes_per_param", "gb_per_s",
              "bandwidth_gb_per_s", "pct_bandwidth", "read_bandwidth_gb_per_s", "speedup_vs"]


def check_csv(path: str) -> None:
    """Fail before measuring if an existing CSV has other columns (rows would be misread)."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), [])
        if first != CSV_FIELDS:
            raise ValueError(f"{path} has columns {first[:4]}... from another version of bench/; "
                             "move it away or pass another --out")


def append_csv(path: str, rows: list[Row], env: dict[str, str]) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            record = dict(env, preset=row.preset, n_tensors=row.n_tensors, n_params=row.numel, dtype=row.dtype,
                          algorithm=row.algorithm, provider=row.provider, status=row.status, reason=row.reason,
                          reps=len(row.times), bytes_per_param=row.bytes_per_param)
            if row.ok:
                med, p20, p80 = row.quantiles()
                gbs = row.bytes_per_s() / 1e9
                record.update(median_ms=f"{med * 1e3:.6g}", p20_ms=f"{p20 * 1e3:.6g}", p80_ms=f"{p80 * 1e3:.6g}",
                              params_per_s=f"{row.params_per_s():.4g}", gb_per_s=f"{gbs:.4g}",
                              bandwidth_gb_per_s=f"{row.bandwidth / 1e9:.4g}",
                              pct_bandwidth=f"{100 * gbs * 1e9 / row.bandwidth:.4g}",
                              read_bandwidth_gb_per_s=f"{row.read_bandwidth / 1e9:.4g}",
                              speedup_vs=";".join(f"{k}={v:.4g}" for k, v in row.speedups.items()))
            writer.writerow(record)


def chart(path: str, rows: list[Row], env: dict[str, str]) -> bool:
    """Median time/step per provider (p20-p80 whiskers, log scale), one panel per (parameter set, dtype).
    agd_kernels bars are labelled with their speedup over the fastest baseline of the same case.
    Returns False (and writes nothing) when no provider ran."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    ok = [r for r in rows if r.ok]
    panels = list(dict.fromkeys((r.preset, r.dtype) for r in ok))
    if not panels:
        return False
    providers = [p for p in dict.fromkeys(r.provider for r in rows) if any(r.provider == p for r in ok)]
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    n_algos = max(len({r.algorithm for r in ok if (r.preset, r.dtype) == p}) for p in panels)
    fig = Figure(figsize=(max(7.0, 1.25 * n_algos + 2), 3.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")  # minor ticks: 2s and 5s only
    for ax, (preset, dtype) in zip(axes, panels):
        mine = [r for r in ok if (r.preset, r.dtype) == (preset, dtype)]
        algos = list(dict.fromkeys(r.algorithm for r in mine))
        for i, algo in enumerate(algos):
            bars = sorted((r for r in mine if r.algorithm == algo), key=lambda r: providers.index(r.provider))
            width = 0.8 / len(bars)
            for j, r in enumerate(bars):
                med, p20, p80 = (x * 1e3 for x in r.quantiles())
                x = i - 0.4 + (j + 0.5) * width
                ax.bar(x, med, width, yerr=[[med - p20], [p80 - med]], color=colors[r.provider], capsize=2)
                baselines = [v for k, v in r.speedups.items() if k != FLOOR]  # the floor is no implementation
                if not r.peer and baselines:
                    ax.annotate(f"{min(baselines):.2g}x", (x, p80), ha="center", va="bottom", fontsize=7,
                                xytext=(0, 2), textcoords="offset points")
        largest = max(mine, key=lambda r: r.n_tensors)
        ax.set_title(f"{preset} ({largest.n_tensors} tensors, {count(largest.numel)} params), {dtype}",
                     fontsize=10)
        ax.set_xticks(range(len(algos)), algos)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(sparse)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("ms / step (median)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles = [Patch(color=colors[p], label=p) for p in providers]
    fig.legend(handles=handles, fontsize=8, ncols=min(5, len(providers)), loc="outside lower center")
    gpu = f", {env['gpu']}" if env["gpu"] else ""
    fig.suptitle(f"optimizer step time: {env['cpu']}{gpu}, {env['threads']} threads "
                 "(labels: agd_kernels speedup over the fastest baseline)", fontsize=9)
    fig.savefig(path, dpi=110)
    return True
