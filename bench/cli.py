"""`python -m bench`: optimizer-step throughput of agd_kernels against torch.optim and the authors'
references, next to the memory bandwidth of the machine it runs on.

For every (parameter set, dtype, algorithm) case the providers step their own copy of the same
random parameters (gradients shared unless a provider writes them), interleaved repetition by
repetition with an in-place bandwidth probe (a *= s over 512 MiB). Reported per provider: median
time/step with p20/p80, params/s, GB/s at the algorithm's minimum bytes/param, % of the bandwidth
measured alongside, and the speedup against each baseline; the read-heavy steps (AGD, LAMB, YellowFin)
also against their same-bytes floor ('vs floor': flat torch ops moving the same bytes, providers.py). Output: a table on stdout, rows appended
to <out>/throughput.csv (tagged with machine, versions and git commit), and <out>/throughput.png.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from agd_kernels import _backends

from . import presets, report
from .providers import (ALGORITHMS, PROVIDERS, TELEMETRY, build_step, default_providers, make_tensors,
                        select_providers)
from .report import Row
from .timing import BandwidthProbe, clock_for, interleaved, summary

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
BACKENDS = _backends.BACKENDS[1:]  # every backend but "auto": a row names the one it ran
PEERS = [name for name in PROVIDERS if not name.startswith("agd_kernels[")]
# --quick: the two bar-setting sets, 1 warmup + 3 timed steps per provider, and torch-foreach only
# where torch has no fused=True (RMSprop): on gpt2-small a foreach Adam step took 0.3-2.8 s on the
# 2-core dev machine; with the foreach rows a quick run took 63-68 s, without them 50 s (every
# algorithm available, load average ~2).
QUICK = dict(presets=["gpt2-small", "many-small"], reps=3, warmup=1)
FULL = dict(presets=list(presets.PRESETS), reps=10, warmup=2)

EPILOG = """examples:
  python -m bench --quick
  python -m bench --preset gpt2-small --algorithms adam agd --dtypes float32 bfloat16
  python -m bench --shapes '[[4096, 4096], [4096]]' --backends cpu torch --providers torch-fused
  python -m bench --model torchvision.models:resnet18 --algorithms sgd adam
"""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sets = ap.add_argument_group("parameter sets (any mix; default: every preset, or gpt2-small and "
                                 "many-small with --quick)")
    sets.add_argument("--preset", nargs="+", choices=list(presets.PRESETS), metavar="NAME",
                      help=f"named parameter sets: {', '.join(presets.PRESETS)}")
    sets.add_argument("--shapes", action="append", default=[], metavar="JSON",
                      help="a JSON list of shapes, inline or a file path, e.g. '[[768, 3072], [3072]]'")
    sets.add_argument("--model", action="append", default=[], metavar="PKG.MODULE:FACTORY",
                      help="the parameter shapes of the nn.Module that FACTORY() returns (built on meta)")
    ap.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS), metavar="ALGO",
                    help=f"default: all of {', '.join(ALGORITHMS)}")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32"], metavar="DTYPE",
                    help=f"parameter dtypes among {', '.join(DTYPES)} (default: float32)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, metavar="BACKEND",
                    help="agd_kernels backends to run (default: the compiled ones for the device: cpu; or "
                         "cuda and triton); 'torch' is the pure-PyTorch reference")
    ap.add_argument("--providers", nargs="+", choices=PEERS, metavar="PROVIDER",
                    help=f"baselines among {', '.join(PEERS)} (default: all but torch-compile)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when a GPU is visible, else cpu")
    ap.add_argument("--reps", type=_int_at_least(1), help="timed steps per provider (default 10, --quick 3)")
    ap.add_argument("--warmup", type=_int_at_least(1), help="untimed steps per provider first (default 2, --quick 1)")
    ap.add_argument("--threads", type=_int_at_least(1), help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--bandwidth-mib", type=_positive_float, default=512.0, metavar="MIB",
                    help="size of the a *= s bandwidth probe buffer (default 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true",
                    help="a first look: gpt2-small and many-small, 1 warmup + 3 timed steps, torch-foreach only "
                         "where torch has no fused=True")
    return ap


def _settings(args: argparse.Namespace, ap: argparse.ArgumentParser):
    """Resolved parameter sets, device and provider names; argument errors exit via ap.error."""
    base = QUICK if args.quick else FULL
    args.reps = args.reps or base["reps"]
    args.warmup = args.warmup or base["warmup"]
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible to torch on this machine")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.preset if (args.preset or args.shapes or args.model) else base["presets"]
    try:
        sets = [presets.preset(n) for n in (names or [])]
        sets += [presets.from_json(s) for s in args.shapes] + [presets.from_model(m) for m in args.model]
    except ValueError as exc:
        ap.error(str(exc))
    if args.backends is None:
        backends = [n for n in default_providers(device) if n.startswith("agd_kernels[")]
    else:
        # each backend with its telemetry=True twin (the cost of telemetry, report.telemetry_costs)
        backends = select_providers(device, [f"agd_kernels[{b}]{t}" for b in args.backends for t in ("", TELEMETRY)])
        dropped = sorted(set(args.backends) - {b[len("agd_kernels["):b.index("]")] for b in backends})
        if dropped:
            ap.error(f"--backends {' '.join(dropped)}: does not run on {device.type} tensors")
    peers = args.providers if args.providers is not None else [p for p in PEERS if PROVIDERS[p].default]
    return sets, device, backends + peers


_READ = ("read-only bandwidth probe",)  # a key no provider name can equal


def run_case(pset: presets.ParamSet, tensors: tuple[list, list], dtype: torch.dtype, algo_name: str,
             provider_names: list[str], device: torch.device, probe: BandwidthProbe, clock, args,
             on_rep) -> tuple[list[Row], dict]:
    """Rows of one case, and {provider: reason} for the providers that do not apply to the algorithm.

    `tensors` = (params, grads) of the whole set; every provider steps its own copy of the params.
    """
    algo = ALGORITHMS[algo_name]
    base, grads = tensors
    if algo.matrices_only:
        keep = [i for i, s in enumerate(pset.shapes) if len(s) >= 2]
        base, grads = [base[i] for i in keep], [grads[i] for i in keep]
    shapes = [tuple(p.shape) for p in base]
    numel = sum(math.prod(s) for s in shapes)
    rows, steps, not_applicable = [], {}, {}
    for name in provider_names:
        provider = PROVIDERS[name]
        why_not = provider.not_applicable(algo)
        if why_not is None and args.quick and name == "torch-foreach" and "torch-fused" in provider_names \
                and PROVIDERS["torch-fused"].not_applicable(algo) is None:
            why_not = "--quick compares with torch-fused, the faster torch baseline"
        if why_not is not None:
            not_applicable[name] = why_not
            continue
        row = Row(pset.name, len(shapes), numel, str(dtype).removeprefix("torch."), algo.name, name, provider.peer,
                  "ok", bytes_per_param=algo.bytes_per_param(dtype))
        reason = provider.unavailable(algo, device, dtype) if shapes else "no tensor of rank >= 2 in the set"
        if reason is not None:
            row.status, row.reason = "unavailable", reason
        else:
            try:
                step = build_step(provider, algo, base, grads)
                step()  # the first warmup step doubles as the check that it runs at all
            except Exception as exc:  # a provider that cannot run is a result, reported with its error
                first_line = (str(exc).splitlines() or [""])[0]
                row.status, row.reason = "failed", f"{type(exc).__name__}: {first_line}"
            else:
                steps[name] = step
        rows.append(row)
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step()
    # the bandwidth probes (keys None and READ, not provider names) are timed in the same rotation
    times = interleaved({**steps, None: probe.step, _READ: probe.read}, args.reps, clock, on_rep)
    bandwidth = probe.bytes / summary(times.pop(None))[0]
    read_bandwidth = probe.read_bytes / summary(times.pop(_READ))[0]
    for row in rows:
        if row.ok:
            row.times, row.bandwidth, row.read_bandwidth = times[row.provider], bandwidth, read_bandwidth
    return rows, not_applicable


def _not_applicable_note(skipped: dict[str, dict[str, str]]) -> str:
    """One line per provider that does not apply to some algorithms, e.g. 'torch-fused: rmsprop (...)'."""
    lines = []
    for provider, by_algo in skipped.items():
        by_reason: dict[str, list[str]] = {}
        for algo, reason in by_algo.items():
            by_reason.setdefault(reason, []).append(algo)
        lines.append(f"  {provider}: " + "; ".join(f"{', '.join(a)} ({r})" for r, a in by_reason.items()))
    return "not applicable (not a failure):\n" + "\n".join(lines) if lines else ""


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    sets, device, provider_names = _settings(args, ap)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "throughput.csv", args.out / "throughput.png"
    try:
        report.check_csv(str(csv_path))
    except ValueError as exc:
        ap.error(str(exc))

    env = report.environment(device)
    print(report.header(env))
    if os.environ.get(_backends.ENV_VAR):
        print(f"note: {_backends.ENV_VAR}={os.environ[_backends.ENV_VAR]} overrides the backend of every "
              "agd_kernels[...] row")
    print(f"bandwidth probes: a *= s (in-place, 'bw') and a.sum() (read-only, 'rd') over {args.bandwidth_mib:g} MiB "
          f"fp32, interleaved with every case; {args.warmup} warmup + {args.reps} timed steps per provider",
          flush=True)

    clock = clock_for(device)
    probe = BandwidthProbe(args.bandwidth_mib, device)
    rows, skipped = [], {}
    total = len(sets) * len(args.dtypes) * len(args.algorithms) * args.reps
    # disable=None: the bar shows on a terminal only, so logs and CI output stay clean
    with tqdm(total=total, desc="bench", unit="rep", disable=None, leave=False) as bar:
        for pset in sets:
            for dtype_name in args.dtypes:
                # drawn once per set and dtype: 124M randn values take seconds on 2 cores
                tensors = make_tensors(pset.shapes, DTYPES[dtype_name], device, args.seed)
                for algo in args.algorithms:
                    bar.set_postfix_str(f"{pset.name} {dtype_name} {algo}")
                    case_rows, case_skipped = run_case(pset, tensors, DTYPES[dtype_name], algo, provider_names,
                                                       device, probe, clock, args, lambda: bar.update(1))
                    rows += case_rows
                    for provider, reason in case_skipped.items():
                        skipped.setdefault(provider, {})[algo] = reason
                    gc.collect()  # a case's parameter copies and optimizer states go before the next
                del tensors
    report.add_speedups(rows)
    print(report.table(rows))
    costs = report.telemetry_costs(rows)
    if costs:
        print(costs)
    note = _not_applicable_note(skipped)
    if note:
        print(note)
    report.append_csv(str(csv_path), rows, env)
    drawn = report.chart(str(png_path), rows, env)
    print(f"appended {len(rows)} rows to {csv_path}; " + (f"chart: {png_path}" if drawn else "no chart (nothing ran)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
