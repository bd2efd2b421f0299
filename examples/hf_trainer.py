"""Hugging Face Trainer with an agd_kernels optimizer: a 2-layer GPT-2 built in code, trained on CPU.

    python examples/hf_trainer.py [--optimizer AdamW|AGD] [--steps 30]

The optimizer goes in through `optimizers=(optimizer, None)`; the Trainer then wraps it in its default
schedule (linear decay, a LambdaLR). For AdamW that scales lr as for torch.optim.AdamW; for AGD, which
has no learning rate, it scales the group's `lr` factor (default 1.0), which multiplies AGD's step.
The data is a synthetic language: each sequence counts up from a random token modulo the vocabulary,
so the next token is predictable and the loss falls within a few dozen steps.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import agd_kernels as ak

VOCAB, LENGTH = 64, 16


class CountingData(torch.utils.data.Dataset):
    """Sequences (s, s+1, s+2, ...) mod VOCAB from a fixed generator: labels are the inputs (the model
    shifts them)."""

    def __init__(self, size: int):
        gen = torch.Generator().manual_seed(0)
        starts = torch.randint(0, VOCAB, (size, 1), generator=gen)
        self.ids = (starts + torch.arange(LENGTH)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "AGD":
        # Named parameters, so init_weights zeroes the biases; "follow" updates each bias and LayerNorm
        # weight with the weight before it.
        opt = ak.AGD(model.named_parameters(), bias_mode="follow")
        opt.init_weights()
        return opt
    return ak.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)


def main(argv=None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=["AdamW", "AGD"], default="AdamW")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    optimizer = make_optimizer(args.optimizer, model)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=16, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
            # Gradient clipping would change AGD's G (it measures gradient norms); AGD bounds its own step.
            max_grad_norm=0.0 if args.optimizer == "AGD" else 1.0)
        trainer = Trainer(model=model, args=training, train_dataset=CountingData(512),
                          optimizers=(optimizer, None))
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    first, last = losses[0], sum(losses[-3:]) / len(losses[-3:])
    print(f"{args.optimizer}: loss {first:.3f} -> {last:.3f} (mean of the last 3) over {args.steps} steps")
    return first, last


if __name__ == "__main__":
    main()
