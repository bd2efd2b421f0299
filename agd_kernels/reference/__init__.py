"""Pure-PyTorch reference implementations: the executable spec, the `torch` backend, the test oracle.

One module per algorithm, each function working in place on lists of tensors with the same
signature as its op in agd_kernels.ops. Rules every function follows:
- math in fp32 for fp16/bf16 tensors (`upcast`), results rounded once into the stored dtype;
- no host synchronisation: every per-step scalar (lr, step, grad_scale, found_inf) stays a tensor;
- `found_inf` nonzero changes nothing (parameters, state and step counters keep their bits).
"""
