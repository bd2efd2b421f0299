"""Bytes per fp32 parameter and kernel launches per step, ours vs torch fused vs apex, and the step time the
bytes imply at H100 and H200 memory bandwidth for a 1B-parameter model. `python -m bench.bytes_table` prints
the README table (tests/bench/test_bytes_table.py checks that README.md holds exactly this output).

Ours: the launches are counted by running each optimizer's step with the Triton backend (the GPU path
today) on CPU tensors in the Triton interpreter, with every kernel launch counted; the bytes are the sum,
over the kernels that step launched, of what each reads and writes per element (STREAMS, from the kernels'
loads and stores; tests/backends/test_sass_census.py checks the vector accesses of the compiled kernels).

torch fused (`fused=True`) and apex (FusedAdam, FusedSGD, FusedAdagrad, FusedLAMB): both batch tensors with
a multi-tensor-apply launcher: one launch holds at most MAX_TENSORS[lists] tensors and 320 chunks of 65536
elements, so their launch count grows with the model (launches() simulates that rule on MODEL). apex LAMB
runs 4 such passes besides its two update passes (norms of the gradients, of their blend, of the
parameters per tensor, of the update per tensor; each norm pass ends with one reduction launch). Buffer
allocations (zero fills) are not counted for anyone. Times are bytes / bandwidth, launch latency excluded.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit (the CPU run of the GPU path)

BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s: H100 SXM (HBM3) and H200 (HBM3e) peak figures
CHUNK, MAX_CHUNKS = 65536, 320  # multi-tensor apply: elements per chunk, chunks per launch
MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}  # tensors per launch by number of tensor lists


def gpt_model(d: int = 2048, layers: int = 18, vocab: int = 50304, context: int = 2048) -> list[int]:
    """Tensor sizes of a GPT-style model (embeddings; per layer qkv, projection, 4d MLP, their biases, two
    layer norms; a final norm): 1.01B parameters in 220 tensors at the defaults."""
    sizes = [vocab * d, context * d]
    for _ in range(layers):
        sizes += [d * 3 * d, 3 * d, d * d, d, d * 4 * d, 4 * d, 4 * d * d, d, d, d, d, d]
    return sizes + [d, d]


MODEL = gpt_model()

#: (fp32 streams read, written) per element by each kernel, in the configuration of ALGORITHMS below.
STREAMS = {
    "_slice_sumsq_kernel": (1, 0),  # g
    "_agd_update_kernel": (2, 1),  # p g / p
    "_adam_kernel": (4, 3),  # p g m v / p m v (amsgrad off)
    "_sgd_kernel": (3, 2),  # p g buf / p buf
    "_rmsprop_kernel": (3, 2),  # p g square_avg / p square_avg (not centered, no momentum)
    "_adagrad_kernel": (3, 2),  # p g sum / p sum
    "_lamb_moments_kernel": (4, 2),  # p g m v / m v
    "_lamb_apply_kernel": (3, 1),  # p m v / p
    "_yellowfin_stats_kernel": (2, 0),  # g grad_avg
    "_yellowfin_tune_kernel": (0, 0),  # one program over the tuner's scalars
    "_yellowfin_apply_kernel": (4, 3),  # p g grad_avg buf / p grad_avg buf
}

#: name -> (agd_kernels class and its arguments, torch fused: (multi-tensor passes, extra launches) or None,
#: apex likewise or None). A pass is (tensor lists, fp32 streams read, written, what it runs over: "params",
#: "steps" (one 1-element tensor per parameter) or "norms" (apex's 2 partial norms)).
ALGORITHMS = {
    "AGD": (("AGD", {"bias_mode": "follow"}), None, None),
    "Adam / AdamW": (("AdamW", {"lr": 1e-3}), ([(4, 4, 3, "params"), (1, 0, 0, "steps")], 0),
                     ([(4, 4, 3, "params")], 0)),
    "SGD momentum": (("SGD", {"lr": 0.1, "momentum": 0.9}), ([(3, 3, 2, "params")], 0), ([(3, 3, 2, "params")], 0)),
    "RMSprop": (("RMSprop", {"lr": 1e-2}), None, None),
    "Adagrad": (("Adagrad", {"lr": 1e-2}), ([(3, 3, 2, "params"), (1, 0, 0, "steps")], 0),
                ([(3, 3, 2, "params")], 0)),
    "LAMB": (("LAMB", {"lr": 1e-3}), None,
             ([(1, 1, 0, "params"), (1, 0, 0, "norms"), (1, 1, 0, "params"), (4, 4, 3, "params"),
               (1, 1, 0, "params"), (2, 2, 1, "params")], 4)),
    "YellowFin": (("YellowFin", {}), None, None),
}
# torch fused Adam and Adagrad: the step counters' increment (one pass over 1-element tensors), then the
# update pass; RMSprop and LAMB have no fused version. apex LAMB: grad
# norm, blend of the norms (2 one-element tensors), stage 1 (g p m v -> m v and the update, stored in g),
# parameter norms, update norms, stage 2 (p, update -> p); 4 norm passes + 4 reductions.
_NOTES = {"RMSprop": ("none", "none"), "LAMB": ("none", None), "AGD": ("none", "none"),
          "YellowFin": ("none", "none")}


def launches(lists: int, sizes: list[int]) -> int:
    """Launches of one multi-tensor-apply pass over tensors of `sizes` elements: a launch closes when it
    holds MAX_TENSORS[lists] tensors (at the end of one) or MAX_CHUNKS chunks, or at the last chunk."""
    count = tensors = chunks = 0
    for t, n in enumerate(sizes):
        tensors += 1
        n_chunks = max(1, -(-n // CHUNK))
        for c in range(n_chunks):
            chunks += 1
            last = c == n_chunks - 1
            if (tensors == MAX_TENSORS[lists] and last) or chunks == MAX_CHUNKS or (t == len(sizes) - 1 and last):
                count += 1
                chunks = 0
                tensors = 0 if last else 1
    return count


def _their(spec, sizes: list[int]) -> tuple[int, int] | None:
    """(bytes per parameter, launches per step) of a list of multi-tensor passes."""
    if spec is None:
        return None
    passes, extra = spec
    bytes_, count = 0, extra
    over = {"params": sizes, "steps": [1] * len(sizes), "norms": [1, 1]}
    for lists, reads, writes, what in passes:
        bytes_ += 4 * (reads + writes)
        count += launches(lists, over[what])
    return bytes_, count


def ours() -> dict[str, tuple[int, int]]:
    """(bytes per fp32 parameter, launches per step) of each algorithm, from the kernels a step of the Triton
    backend launches: the second step of a small model (the first one creates state and tables)."""
    import importlib

    import torch

    import agd_kernels as ak
    from agd_kernels.triton_kernels import op_table

    launched: list[str] = []
    modules = [importlib.import_module(m) for m in
               sorted({launcher.__module__ for launcher in op_table.LAUNCHERS.values()} | {op_table.__package__ +
                                                                                         ".multi_tensor"})]
    originals = {m: m.wrap_triton for m in modules if hasattr(m, "wrap_triton")}

    def counting(wrap):
        def wrapped(kernel):
            launched.append(kernel.fn.__name__)
            return wrap(kernel)
        return wrapped

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    out = {}
    try:
        for m, wrap in originals.items():
            m.wrap_triton = counting(wrap)
        for name, ((cls, kwargs), _, _) in ALGORITHMS.items():
            opt = getattr(ak, cls)(model.parameters(), backend="triton", **kwargs)
            for _ in range(2):
                for p in model.parameters():
                    p.grad = torch.randn_like(p) * 1e-2
                launched.clear()
                opt.step()
            out[name] = (4 * sum(sum(STREAMS[k]) for k in launched), len(launched))
    finally:
        for m, wrap in originals.items():
            m.wrap_triton = wrap
    return out


def _ms(bytes_per_param: int, device: str) -> str:
    return f"{bytes_per_param * sum(MODEL) / BANDWIDTH[device] * 1e3:.2f}"


def table() -> str:
    """The README table (markdown)."""
    mine = ours()
    n = sum(MODEL)
    lines = [
        f"| fp32, {n / 1e9:.2f}B params in {len(MODEL)} tensors | ours: B/param, launches | torch fused "
        "| apex | H100 ms: ours / torch / apex | H200 ms: ours / torch / apex |",
        "|---|---|---|---|---|---|",
    ]
    for name, (_, torch_spec, apex_spec) in ALGORITHMS.items():
        b, count = mine[name]
        cells, h100, h200 = [], [_ms(b, "H100")], [_ms(b, "H200")]
        for i, spec in enumerate((torch_spec, apex_spec)):
            theirs = _their(spec, MODEL)
            if theirs is None:
                cells.append(_NOTES[name][i] or "none")
                h100.append("-")
                h200.append("-")
            else:
                cells.append(f"{theirs[0]} B, {theirs[1]}")
                h100.append(_ms(theirs[0], "H100"))
                h200.append(_ms(theirs[0], "H200"))
        lines.append(f"| {name} | {b} B, {count} | {cells[0]} | {cells[1]} | {' / '.join(h100)} | {' / '.join(h200)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
