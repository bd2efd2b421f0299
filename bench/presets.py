"""Parameter sets to benchmark: named presets, an explicit JSON list of shapes, or any nn.Module's shapes.

A parameter set is only a list of shapes in `parameters()` order; the benchmark fills the tensors
with random values. Every error names the command-line option it came from.
"""
from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSet:
    name: str
    shapes: tuple[Shape, ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def matrices(self) -> "ParamSet":
        """The tensors of rank >= 2: what AGD normalises (its authors' reference rejects the others)."""
        return ParamSet(self.name, tuple(s for s in self.shapes if len(s) >= 2))


def gpt2_small() -> list[Shape]:
    """GPT-2 small as GPT2LMHeadModel.parameters() lists it: 148 tensors, 124,439,808 elements
    (lm_head tied to wte). Matrices in nn.Linear's (out, in) orientation; HF's Conv1D stores
    (in, out), which changes no step's cost."""
    d, vocab, context, layers = 768, 50257, 1024, 12
    shapes: list[Shape] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                      # ln_1
                   (3 * d, d), (3 * d,),            # attn.c_attn (fused QKV)
                   (d, d), (d,),                    # attn.c_proj
                   (d,), (d,),                      # ln_2
                   (4 * d, d), (4 * d,),            # mlp.c_fc
                   (d, 4 * d), (d,)]                # mlp.c_proj
    return shapes + [(d,), (d,)]                    # ln_f


def resnet50() -> list[Shape]:
    """torchvision resnet50().parameters(): 161 tensors (53 convs, 53 BatchNorm weight/bias pairs,
    fc weight and bias), 25,557,032 elements. Built here so torchvision is not needed."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    fan_in = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out = 4 * width  # bottleneck expansion
        for block in range(blocks):
            shapes += [(width, fan_in, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if block == 0:  # downsample: 1x1 conv + BatchNorm on the shortcut
                shapes += [(out, fan_in, 1, 1), (out,), (out,)]
            fan_in = out
    return shapes + [(1000, 2048), (1000,)]


def many_small() -> list[Shape]:
    """640 matrices of 1,040-8,384 elements (rows 16-64, columns 65-131, mixed): a set where per-tensor
    launch and loop overhead, not bandwidth, decides the step time (adapters, small heads)."""
    return [(16 + (i % 7) * 8, 65 + (i * 37) % 67) for i in range(640)]


PRESETS = {"gpt2-small": gpt2_small, "resnet50": resnet50, "many-small": many_small}


def preset(name: str) -> ParamSet:
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return ParamSet(name, tuple(PRESETS[name]()))


def from_json(text: str) -> ParamSet:
    """--shapes: a JSON list of shapes (lists of non-negative ints; a bare int is a 1-D tensor), given
    inline or as the path of a JSON file."""
    source = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--shapes must be a JSON list of shapes such as [[768, 768], [768]]; {exc}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"--shapes must be a non-empty JSON list of shapes; got {source!r}")
    shapes = []
    for i, s in enumerate(data):
        s = [s] if isinstance(s, int) else s
        if not (isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                    for d in s)):
            raise ValueError(f"--shapes entry {i} must be a list of non-negative ints (or one int); got {s!r}")
        shapes.append(tuple(s))
    return ParamSet("shapes", tuple(shapes))


def from_model(spec: str) -> ParamSet:
    """--model pkg.module:factory: the parameter shapes of the module factory() returns.

    The factory runs under torch.device("meta"), so even a large model allocates nothing.
    """
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise ValueError(f"--model must look like pkg.module:factory; got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--model {spec!r}: cannot load {attr!r} from {module_name!r}: {exc}") from None
    try:
        with torch.device("meta"):
            model = factory()
    except Exception as exc:  # whatever the user's factory raises, say which option it came from
        raise ValueError(f"--model {spec!r}: {attr}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {spec!r}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    if not shapes:
        raise ValueError(f"--model {spec!r}: the module has no parameters")
    return ParamSet(f"model:{spec}", shapes)
