"""``axolotl-maskthought quickstart``: did it help? Small runs on your CPU, and a verdict.

Builds a tiny GPT-2 and a tokenizer on the spot, generates multiplication
problems in the ICoT format, fine-tunes through axolotl with this plugin (one
run per method, same model, data and optimizer steps), scores each on held-out
problems and says, from those numbers, whether the technique beat its baseline.

* default: Stepwise Internalization (keep_position, smoothing λ 4, optimizer reset,
  a pace in optimizer steps) against no-CoT training of the same model for the same
  optimizer steps on 2x2 multiplication, both answering with NO chain of thought; the
  two arms train side by side, one process per core (``--jobs 1``: one after the other);
* ``--long``: the same comparison on 3x3, the recipe of
  ``examples/yaml/cpu_multiplication_icot_si.yml`` (55,000 steps an arm: about 65 minutes on 2 idle cores, estimated);
* ``--mft``: Masked Thought against plain CoT fine-tuning (SFT), both answering
  with their chain of thought, scored clean and after one injected CoT error
  (``eval --inject-error``), on few training problems seen for many epochs; the verdict
  calls a difference within two standard errors noise and adds, on the problems both
  answer right clean, how often each answer survives the error (bench/RESULTS.md §10);
* ``--quick``: the default's and ``--mft``'s code paths at toy size (a pipeline check, not a result).

Prints progress, a table and the verdict; writes ``results.json`` (before
anything optional), ``quickstart.png`` (loss and held-out accuracy against the
optimizer step) and every config it trained with. axolotl's and the libraries'
own output goes to ``train.log``. Nothing is downloaded; nothing outside
``--output`` is read.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from axolotl_maskthought.toy.experiment import LONG, MFT, QUICK, WIN_2X2, format_table, plot, run


@contextmanager
def _quiet(log_path: Path, verbose: bool):
    """Send everything the libraries write (Python and C level: axolotl's logs, progress
    bars, torchao and torch warnings) to ``log_path``; yield a stream to the terminal."""
    if verbose:
        yield sys.stdout
        return
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):  # no real file descriptors (e.g. a notebook)
        terminal = sys.stdout
        with open(log_path, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
            yield terminal
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    terminal = open(os.dup(fds[0]), "w", buffering=1, encoding="utf-8", closefd=True)
    log = open(log_path, "a", encoding="utf-8")
    for fd in fds:
        os.dup2(log.fileno(), fd)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip(fds, saved):
            os.dup2(old, fd)
            os.close(old)
        terminal.close()
        log.close()


# ---- command ------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    chosen = [flag for flag in ("quick", "long", "mft") if getattr(args, flag)]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join('--' + flag for flag in chosen)} are different runs: choose one")
    comparisons = QUICK if args.quick else [LONG] if args.long else [MFT] if args.mft else [WIN_2X2]
    if args.jobs not in (1, 2):
        raise ValueError(f"--jobs must be 1 (one arm after the other) or 2 (side by side), got {args.jobs}")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    os.environ["MASKTHOUGHT_QUICKSTART_THREADS"] = str(args.threads)  # the arms' worker processes
    log_path = output / "train.log"
    print(
        f"quickstart{' --quick (a pipeline check, not a result)' if args.quick else ''}: "
        f"tiny runs through axolotl on this CPU; library output goes to {log_path}",
        flush=True,
    )
    with _quiet(log_path, args.verbose) as terminal:
        summary = run(output, comparisons, seed=args.seed, terminal=terminal, jobs=args.jobs)
    for comparison in summary["comparisons"]:
        print(f"\n{comparison['title']} ({comparison['task']}, seed {summary['seed']}, greedy decoding):")
        print(format_table(comparison["results"]))
        print(f"Verdict: {comparison['verdict']}")
    config_dirs = sorted({str(Path(r["config"]).parent) for c in summary["comparisons"] for r in c["results"]})
    print(
        f"\nresults: {output / 'results.json'}   configs: {', '.join(d + '/*.yml' for d in config_dirs)}   "
        f"log: {log_path}   total {summary['total_seconds']:.0f} s"
    )
    try:
        with _quiet(log_path, args.verbose):
            plot(summary, output / "quickstart.png")
    except ImportError as err:
        print(f"plot skipped ({err}); install matplotlib to draw it")
    else:
        print(f"plot: {output / 'quickstart.png'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train tiny models with and without a technique, on this CPU, and say whether it helped",
        description=__doc__.split("\n\n")[1] + " Default: Stepwise Internalization vs no-CoT training on 2x2 "
        "multiplication; --long: the same on 3x3; --mft: Masked Thought vs SFT, clean and after one injected CoT "
        "error; --quick: toy size."
        if __doc__
        else None,
    )
    parser.add_argument(
        "--output",
        default="maskthought-quickstart",
        help="directory for data, model, configs, plot (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="toy-sized runs of both comparisons (CI smoke test)")
    parser.add_argument(
        "--long",
        action="store_true",
        help="Stepwise Internalization vs no-CoT training on 3x3 (the recipe of "
        "examples/yaml/cpu_multiplication_icot_si.yml; 55,000 steps an arm, about 65 minutes on 2 idle cores, estimated)",
    )
    parser.add_argument(
        "--mft",
        action="store_true",
        help="Masked Thought vs SFT, answering with CoT: clean accuracy and accuracy after one injected CoT error",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        metavar="N",
        help="2: the two arms train side by side, one process each; 1: one after the other (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed: data order, masks, removal offsets (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default: %(default)s; these models are too small to gain from more, and "
        "two threads per process thrashed on a busy 2-core machine)",
    )
    parser.add_argument("--verbose", action="store_true", help="show axolotl's own log output")
    parser.set_defaults(func=command)
