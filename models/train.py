"""Train a model: ``gpukernels-train --model cnn --dataset digits`` (``python -m models.train`` in a clone).

``gpukernels-train`` is the console script a ``pip install 'gpukernels[train]'`` puts on the
PATH; ``python -m models.train`` (``make train``) runs the same ``main`` from the repository.

Prints a progress bar per epoch (loss, images/s), one line of loss and accuracy per
epoch, the test accuracy, and as its last line one JSON object (model, dataset, device,
epochs, test_accuracy, train_loss, seconds, images_per_second, ...).

Checkpoints (``--checkpoint PATH``) are written after every epoch, atomically (a temp
file in the same directory, fsync, rename, fsync of the directory; temp files of a killed
run are removed at the next start). Each is one safetensors file (``gk.save``): the model's
tensors under ``model.``, the optimizer's state arrays under ``optimizer.``, and as JSON
metadata the format version, the arguments, the learning rate, the epoch, the history, the
optimizer's hyper-parameters and step counts, and every RNG state (initialisation/dropout
and the loader's shuffle/augmentation), with a SHA-256 of the whole content, so
``--resume`` continues exactly where the run stopped. ``--resume`` never unpickles, and
checks everything (checksum, format, shapes against the model, hyper-parameters, the
arguments that must match) before it loads anything.

Anything a user can get wrong (data, names, paths, a diverging loss) ends with one
line ``error: ...`` on stderr and a non-zero exit code, never a traceback, and never
overwrites the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.data import DATASETS, DataLoader, DatasetError, load_dataset, random_crop_flip
from gpukernels.random import get_rng_state, set_rng_state
from gpukernels.serialization import CheckpointError, atomic_write, remove_stale_temps  # noqa: F401 - atomic_write: models.filters_demo

from models import data_parallel

# 1: a pickle (never loaded: unpickling can run code); 2: safetensors through gk.save
CHECKPOINT_FORMAT = ("gpukernels.models.train", 2)


class TrainError(Exception):
    """A problem the user can fix; main() prints it as one line and exits 1."""


# ----------------------------------------------------------------------------- choices


def _make_model(name: str, in_shape: tuple, num_classes: int, dataset: str = "this dataset"):
    """The model ``name`` for ``in_shape`` images, checked by a forward of two blank
    images (eval mode, no autograd: no statistics move), so that a model and a dataset
    that do not fit end in one TrainError naming both, not a traceback at step 1."""
    from models.cnn import cnn_for  # noqa: PLC0415 - models import gk.nn; keep --help fast
    from models.fast_cifar import INPUT_SIZE, fast_cifar  # noqa: PLC0415
    from models.mlp import mlp  # noqa: PLC0415
    from models.resnet import resnet8, resnet20  # noqa: PLC0415

    factories = {
        "mlp": lambda: mlp(in_shape, num_classes),
        "cnn": lambda: cnn_for(in_shape, num_classes),
        "resnet8": lambda: resnet8(num_classes=num_classes, in_channels=in_shape[0]),
        "resnet20": lambda: resnet20(num_classes=num_classes, in_channels=in_shape[0]),
        "fastcifar": lambda: fast_cifar(num_classes=num_classes, in_channels=in_shape[0]),
    }
    size = "x".join(map(str, in_shape))
    if name == "fastcifar" and tuple(in_shape[1:]) != (INPUT_SIZE, INPUT_SIZE):
        raise TrainError(f"--model fastcifar needs {INPUT_SIZE}x{INPUT_SIZE} images (--dataset cifar10 or "
                         f"synthetic), but --dataset {dataset} has {size} images")
    try:
        model = factories[name]()
        model.eval()
        with gk.no_grad():
            model(gk.zeros(2, *in_shape))
        model.train()
        return model
    except ValueError as exc:  # e.g. a CNN with no layout for this image size
        raise TrainError(f"--model {name} does not fit --dataset {dataset} ({size} images): {exc}") from exc


MODELS = ("mlp", "cnn", "resnet8", "resnet20", "fastcifar")

# name -> (factory(params, lr, weight_decay, capturable), default learning rate);
# capturable: step counts on the device, so --cuda-graph can record optimizer.step()
OPTIMIZERS = {
    "sgd": (lambda p, lr, wd, c: gk.optim.SGD(p, lr=lr, weight_decay=wd, capturable=c), 0.1),
    "momentum": (lambda p, lr, wd, c: gk.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd,
                                                   capturable=c), 0.05),
    "adagrad": (lambda p, lr, wd, c: gk.optim.Adagrad(p, lr=lr, weight_decay=wd, capturable=c), 0.01),
    "rmsprop": (lambda p, lr, wd, c: gk.optim.RMSprop(p, lr=lr, weight_decay=wd, capturable=c), 1e-3),
    "adam": (lambda p, lr, wd, c: gk.optim.Adam(p, lr=lr, weight_decay=wd, capturable=c), 3e-3),
    "adamw": (lambda p, lr, wd, c: gk.optim.AdamW(p, lr=lr, weight_decay=wd, capturable=c), 3e-3),
}
DEVICES = ("auto", "cpu", "cuda", "interpret")

# --precision -> (autocast dtype or None, TF32 convolutions on a GPU)
PRECISIONS = {
    "fp32": (None, False),
    "tf32": (None, True),
    "bf16": (gk.bfloat16, True),
    "fp16": (gk.float16, True),
}


def _select_precision(precision: str | None, device: str):
    """Apply ``--precision`` (TF32 switch); returns (name, autocast dtype or None)."""
    if precision is None:
        precision = "tf32" if device == "cuda" else "fp32"
    dtype, tf32 = PRECISIONS[precision]
    if precision == "bf16" and device != "cuda":
        raise TrainError(f"--precision bf16 needs --device cuda (got {device}): NumPy has no "
                         "bfloat16 and the Triton interpreter no bf16 matrix products; "
                         "--precision fp16 tries reduced precision on a CPU")
    backend.set_allow_tf32(tf32)
    return precision, dtype


def _select_device(device: str) -> str:
    """Set the process-wide backend for ``--device``; returns the device's name
    (``cpu`` for the NumPy backend)."""
    if device == "auto":
        return "cpu" if gk.get_backend() == "numpy" else gk.get_backend()
    name = "numpy" if device == "cpu" else device
    if name not in backend.BACKENDS:
        raise TrainError(f"--device {device}: this build of gpukernels has no '{name}' backend "
                         f"(it has {', '.join(backend.BACKENDS)})")
    try:
        gk.set_backend(name)
    except RuntimeError as exc:
        raise TrainError(f"--device {device}: {exc}") from exc
    return device


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _prog() -> str:
    """The command the user typed, for usage lines: the console script or ``-m``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "gpukernels-train" if name.startswith("gpukernels-train") else "python -m models.train"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_prog(), description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", help="directory with the MNIST IDX files or CIFAR-10 batches")
    p.add_argument("--train-size", type=int, help="train on the first N examples (seeded order)")
    p.add_argument("--test-size", type=int, help="evaluate on the first N test examples")
    p.add_argument("--epochs", type=int, default=30, help="total epochs (a resumed run counts the done ones)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=float, help="learning rate (default per optimizer: "
                   + ", ".join(f"{k} {v[1]:g}" for k, v in OPTIMIZERS.items()) + ")")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true", help="no random crop/flip on CIFAR-10")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="fp32: float32 everywhere; tf32 (default on cuda): float32 storage, TF32 "
                        "tensor-core convolutions; bf16: bfloat16 activations and gradients, float32 "
                        "accumulation and master weights (cuda only); fp16: the same in float16, "
                        "no loss scaling (for trying reduced precision on a CPU)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="record the whole training step (forward, backward, optimizer) as a CUDA "
                        "graph after 3 eager steps and replay it (--device cuda; drops the last "
                        "partial batch of each epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", metavar="PATH", help="write a checkpoint here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint PATH")
    p.add_argument("--plot", metavar="PNG", help="save loss/accuracy curves here")
    p.add_argument("--log-every", type=int, default=0, metavar="STEPS",
                   help="also print the loss every STEPS steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under torchrun: batch statistics over every rank's batch (SyncBatchNorm)")
    p.add_argument("--dist-timeout", type=float, default=600, metavar="SECONDS",
                   help="under torchrun: a collective that waits longer fails the run (default 600)")
    return p


def _check_args(p, args):
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lr is not None and not (np.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if not (np.isfinite(args.weight_decay) and args.weight_decay >= 0):
        p.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.log_every < 0:
        p.error(f"--log-every must be >= 0, got {args.log_every}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.cuda_graph and args.device not in ("cuda", "auto"):
        p.error(f"--cuda-graph needs --device cuda (CUDA graphs), got --device {args.device}")
    if not (np.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        p.error(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint PATH (the checkpoint to continue from)")
    for flag, path in (("--checkpoint", args.checkpoint), ("--plot", args.plot)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                p.error(f"{flag} {path}: directory {folder} does not exist")
            if os.path.isdir(path):
                p.error(f"{flag} {path} is a directory; give a file path")


# ----------------------------------------------------------------------------- checkpoints


# What must match between a checkpoint and the run resuming it.
_RESUME_KEYS = ("model", "dataset", "optimizer", "batch_size", "train_size", "seed", "weight_decay")
_CHECKPOINT_KEYS = ("format", "args", "epoch", "model", "optimizer", "rng", "loader", "history")


def save_checkpoint(path, args, lr, epoch, model, optimizer, loader, history):
    """Write the checkpoint of the run after ``epoch``, atomically (``gk.save``): one
    safetensors file with the model's tensors under ``model.`` and the optimizer's state
    arrays under ``optimizer.state.<index>.``, and as JSON metadata the format
    (``CHECKPOINT_FORMAT``), the arguments that must match on resume and the learning
    rate, the epoch, the history, the library's and the loader's RNG states (NumPy
    PCG64 states) and the optimizer's step counts and hyper-parameters, all covered by
    a SHA-256."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "args": {**{k: getattr(args, k) for k in _RESUME_KEYS}, "lr": lr,
                 "world_size": getattr(args, "world_size", 1)},
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": get_rng_state(),
        "loader": loader.state_dict(),
        "history": history,
    }
    try:
        gk.save(state, path)
    except OSError as exc:
        kept = "; the previous checkpoint is intact" if os.path.exists(path) else ""
        raise TrainError(f"cannot write checkpoint {path}: {exc.strerror or exc}{kept}") from exc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_arrays(path, kind, saved, own) -> None:
    """``saved`` (name -> array) has exactly ``own``'s names, shapes and dtypes, and
    finite values; raise TrainError naming the first difference."""
    if not isinstance(saved, dict):
        raise TrainError(f"--resume: {path}: its {kind} state is a {type(saved).__name__}, not a dict")
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    if missing or extra:
        raise TrainError(f"--resume: {path}: its {kind} tensors do not fit this model"
                         + (f"; missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}"
                            if missing else "")
                         + (f"; unexpected {', '.join(map(str, extra[:4]))}{', ...' if len(extra) > 4 else ''}"
                            if extra else ""))
    for key, target in own.items():
        value = saved[key]
        value = value.numpy() if isinstance(value, gk.Tensor) else value
        shape = tuple(getattr(target, "shape", ()))
        if not hasattr(value, "shape") or tuple(value.shape) != shape:
            raise TrainError(f"--resume: {path}: {kind} tensor {key} has shape "
                             f"{tuple(getattr(value, 'shape', ()))}, this model's has {shape}")
        if np.dtype(value.dtype) != np.dtype(target.dtype):
            raise TrainError(f"--resume: {path}: {kind} tensor {key} has dtype {value.dtype}, "
                             f"this model's has {target.dtype}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise TrainError(f"--resume: {path}: {kind} tensor {key} holds NaN or infinite values")


def _check_checkpoint(path, args, state, model) -> None:
    """Everything ``run`` takes from ``state`` is there, of the right type and shape,
    in range, and written by a run this one may continue; else TrainError."""
    if not isinstance(state, dict) or not isinstance(state.get("format"), tuple) or \
            state["format"][:1] != CHECKPOINT_FORMAT[:1]:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise TrainError(f"--resume: {path} is not a checkpoint of models.train (format {found!r:.80})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise TrainError(f"--resume: {path} is in checkpoint format {state['format'][1:]!r:.40}; this "
                         f"models.train reads format {CHECKPOINT_FORMAT[1]}")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise TrainError(f"--resume: {path} lacks {', '.join(missing)}")
    saved = state["args"]
    if not isinstance(saved, dict) or any(k not in saved for k in (*_RESUME_KEYS, "lr")):
        raise TrainError(f"--resume: {path}: its arguments lack "
                         f"{', '.join(k for k in (*_RESUME_KEYS, 'lr') if not isinstance(saved, dict) or k not in saved)}")
    for key in _RESUME_KEYS:
        if saved[key] != getattr(args, key):
            raise TrainError(f"--resume: {path} was written with --{key.replace('_', '-')} "
                             f"{saved[key]}, this run has {getattr(args, key)}")
    if saved.get("world_size", 1) != getattr(args, "world_size", 1):  # the data shards differ otherwise
        raise TrainError(f"--resume: {path} was written by a run of {saved.get('world_size', 1)} process(es), "
                         f"this run has {getattr(args, 'world_size', 1)}; resume with the same world size")
    if not (_is_number(saved["lr"]) and saved["lr"] > 0):
        raise TrainError(f"--resume: {path} holds learning rate {saved['lr']!r:.40}, not a positive number")
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise TrainError(f"--resume: {path} holds epoch {epoch!r:.40}, not a count >= 1")
    history = state["history"]
    if not (isinstance(history, dict) and set(history) == {"train_loss", "train_acc", "test_acc"}
            and all(isinstance(v, list) and len(v) == epoch and all(map(_is_number, v))
                    for v in history.values())):
        raise TrainError(f"--resume: {path}: its history is not {epoch} epochs of train_loss, "
                         "train_acc and test_acc numbers")
    _check_arrays(path, "model", state["model"], model.state_dict())
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"])):
        raise TrainError(f"--resume: {path}: its optimizer state is not a state_dict "
                         "(state and param_groups)")
    for i, group in enumerate(opt["param_groups"]):
        if not (_is_number(group.get("lr")) and group["lr"] >= 0):
            raise TrainError(f"--resume: {path}: optimizer group {i} has learning rate "
                             f"{group.get('lr')!r:.40}, not a number >= 0")
    for index, values in opt["state"].items():
        if not isinstance(values, dict):
            raise TrainError(f"--resume: {path}: optimizer state {index!r:.20} is not a dict")
        for name, value in values.items():
            if name == "step":
                if not (_is_number(value) and value >= 0):
                    raise TrainError(f"--resume: {path}: optimizer state {index}.step is "
                                     f"{value!r:.40}, not a count >= 0")
            elif not hasattr(value, "dtype") or (np.dtype(value.dtype).kind == "f"
                                                 and not np.isfinite(np.asarray(value)).all()):
                raise TrainError(f"--resume: {path}: optimizer state {index}.{name} is not "
                                 "an array of finite numbers")
    for what, rng in (("library", state["rng"]), ("loader", state["loader"].get("rng")
                                                  if isinstance(state["loader"], dict) else None)):
        try:
            np.random.default_rng().bit_generator.state = rng  # PCG64 checks the state
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise TrainError(f"--resume: {path}: its {what} RNG state is malformed "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def load_checkpoint(path, args, model, optimizer, loader) -> dict:
    """Read the checkpoint ``save_checkpoint`` wrote at ``path``, validate all of it
    against this run (format, matching arguments, shapes and dtypes against ``model``,
    hyper-parameters in range, RNG states), then load it into ``model``, ``optimizer``,
    the library's RNG and ``loader``. Returns the state (epoch, args, history).

    Never unpickles (``gk.load``); any problem is a TrainError naming the file, raised
    before anything is loaded or trained."""
    try:
        state = gk.load(path)
    except FileNotFoundError:
        raise TrainError(f"--resume: no checkpoint at {path}") from None
    except OSError as exc:
        raise TrainError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    except CheckpointError as exc:
        raise TrainError(f"--resume: {path} is not a readable checkpoint ({exc.reason})") from None
    try:
        _check_checkpoint(path, args, state, model)
    except TrainError:
        raise
    except Exception as exc:  # a crafted file can put any JSON value or tensor anywhere
        raise TrainError(f"--resume: {path} is malformed ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
    except Exception as exc:  # what the checks above let through (e.g. a missing betas)
        raise TrainError(f"--resume: {path} does not fit this run "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    return state


# ----------------------------------------------------------------------------- training


def _hits(logits, y):
    """How many rows of ``logits`` have their largest value at ``y`` (a device scalar:
    no host sync). bf16 logits are widened first (their uint16 bits do not compare)."""
    scores = logits.detach()
    if scores.dtype == gk.bfloat16:
        scores = scores.float()
    return (scores.data.argmax(1) == y.data).sum()


def evaluate(model, loader, precision=None) -> float:
    """Accuracy of ``model`` (in eval mode, no autograd) over ``loader``; ``precision``:
    the autocast dtype of the forward (None: float32)."""
    model.eval()
    correct = total = 0
    with gk.no_grad(), gk.autocast(precision or gk.bfloat16, enabled=precision is not None):
        for x, y in loader:
            correct = correct + _hits(model(x), y)
            total += len(y)
    model.train()
    return int(correct) / total


def make_train_step(model, optimizer, precision=None):
    """One training step ``step(x, y) -> (loss, logits)``: zero_grad, forward and loss
    (under autocast when ``precision`` is a dtype), backward, optimizer update."""

    def step(x, y):
        optimizer.zero_grad()
        with gk.autocast(precision or gk.bfloat16, enabled=precision is not None):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        return loss, logits

    return step


def _progress(loader, epoch, epochs, enabled):
    """tqdm over the batches when wanted and installed (TTY only), else the loader."""
    if not enabled:
        return loader
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional ('train' extra)
    except ImportError:
        return loader
    return tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                dynamic_ncols=True, disable=None, file=sys.stderr)


# A cross-entropy this many times above chance level (ln classes) or above the run's
# first loss, whichever is larger, means the run diverged: stop rather than train on.
DIVERGENCE_FACTOR = 1e3


def train_epoch(train_step, loader, epoch, epochs, limit=float("inf"), progress=True,
                log_every=0):
    """One pass over ``loader`` with ``train_step(x, y) -> (loss, logits)`` (from
    ``make_train_step``, or a ``GraphedStep`` of it). Returns (mean loss, accuracy,
    images, seconds in steps).

    Raises TrainError at the first loss that is NaN, infinite or above ``limit``,
    naming the epoch and step (the checkpoint on disk is the last epoch's, untouched).
    ``log_every`` > 0 prints the loss of every that many steps.
    """
    losses, correct, seen, busy = [], 0, 0, 0.0
    bar = _progress(loader, epoch, epochs, progress)
    for step, (x, y) in enumerate(bar, start=1):
        start = time.perf_counter()
        loss, logits = train_step(x, y)
        value = loss.item()  # the step's one host sync
        busy += time.perf_counter() - start
        if not np.isfinite(value):
            raise TrainError(f"the loss became {value} at epoch {epoch}, step {step} "
                             "(try a lower --lr); training stopped")
        if value > limit:
            raise TrainError(f"the loss reached {value:.4g} at epoch {epoch}, step {step}, over "
                             f"{limit:.4g} ({DIVERGENCE_FACTOR:g}x its start): the run diverged "
                             "(try a lower --lr); training stopped")
        losses.append(value)
        if log_every and step % log_every == 0:
            line = f"epoch {epoch} step {step} loss {value:.6f}"
            bar.write(line) if bar is not loader else print(line, flush=True)
        correct = correct + _hits(logits, y)  # on the device: read once an epoch
        seen += len(y)
        if bar is not loader:
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / busy:.0f}", refresh=False)
    if bar is not loader:
        bar.close()
    return float(np.mean(losses)), int(correct) / seen, seen, busy


def save_plot(path: str, history: dict) -> None:
    """Loss and accuracy per epoch, two panels, written atomically as PNG."""
    import matplotlib  # noqa: PLC0415 - optional ('train' extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, history["train_loss"], marker="o", label="train")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, history["train_acc"], marker="o", label="train")
    ax_acc.plot(epochs, history["test_acc"], marker="s", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    except OSError as exc:
        raise TrainError(f"cannot write plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


def run(args, dp=None) -> dict:
    """The whole run for parsed ``args``; returns the summary printed as JSON. ``dp``: the
    ranks of a data-parallel run (``models.data_parallel``), None for one process."""
    dp = dp or data_parallel.Single()
    args.world_size = dp.world_size
    device = _select_device(args.device)
    if args.cuda_graph and device != "cuda":
        raise TrainError(f"--cuda-graph needs --device cuda (CUDA graphs); this run is on {device}")
    if args.cuda_graph and dp.world_size > 1:
        raise TrainError("--cuda-graph is not supported in a data-parallel run (the gradient all-reduce "
                         "runs from backward hooks a graph replay would skip); drop --cuda-graph")
    precision, autocast_dtype = _select_precision(args.precision, device)
    if args.checkpoint and dp.is_main:  # what a run killed mid-write left (nothing written yet)
        for stale in remove_stale_temps(args.checkpoint, include_own=True):
            print(f"removed {stale}, the temp file of an interrupted checkpoint write", flush=True)
    make_opt, default_lr = OPTIMIZERS[args.optimizer]
    lr = args.lr if args.lr is not None else default_lr
    if args.plot:
        try:
            import matplotlib  # noqa: F401, PLC0415 - fail before training, not after
        except ImportError:
            raise TrainError("--plot needs matplotlib: pip install matplotlib") from None
    if args.dataset == "digits":
        try:
            import sklearn.datasets  # noqa: F401, PLC0415 - the digits images ship inside it
        except ImportError:
            raise TrainError("--dataset digits needs scikit-learn, which ships the digits images: "
                             "pip install 'gpukernels[train]' (or scikit-learn)") from None

    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    if args.train_size is not None:
        keep = np.random.default_rng(args.seed).permutation(len(x_train))[: args.train_size]
        x_train, y_train = x_train[keep], y_train[keep]
    if args.test_size is not None:
        x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    augment = random_crop_flip(4) if args.dataset == "cifar10" and not args.no_augment else None
    # a CUDA graph is recorded for one batch shape: no partial last batch
    train = dp.train_loader(x_train, y_train, args.batch_size, args.seed, augment, args.cuda_graph)
    if args.cuda_graph and len(x_train) < args.batch_size:
        raise TrainError(f"--cuda-graph drops partial batches: {len(x_train)} training images make "
                         f"no full batch of {args.batch_size}")
    test = DataLoader(*dp.test_part(x_test, y_test), 256)

    gk.manual_seed(args.seed)
    model = _make_model(args.model, tuple(x_train.shape[1:]), num_classes, args.dataset)
    optimizer = make_opt(model.parameters(), lr, args.weight_decay, args.cuda_graph)
    history = {"train_loss": [], "train_acc": [], "test_acc": []}
    first = 1
    if args.resume:
        state = load_checkpoint(args.checkpoint, args, model, optimizer, train)
        history = state["history"]
        first = state["epoch"] + 1
        print(f"resumed from {args.checkpoint} after epoch {state['epoch']}", flush=True)
        if args.lr is not None and args.lr != state["args"]["lr"]:
            # An explicit --lr wins over the saved one (fine-tuning with a new rate).
            for group in optimizer.param_groups:
                group["lr"] = lr
            print(f"learning rate {state['args']['lr']:g} -> {lr:g}", flush=True)
        else:
            lr = state["args"]["lr"]
        if first > args.epochs:
            raise TrainError(f"--resume: {args.checkpoint} has already done {state['epoch']} "
                             f"epochs; ask for more with --epochs (got {args.epochs})")

    parallel = (f", {dp.world_size} ranks x batch {args.batch_size} = global batch "
                f"{dp.world_size * args.batch_size}" if dp.world_size > 1 else "")
    print(f"{args.model} on {args.dataset} ({len(x_train)} train / {len(x_test)} test images "
          f"{tuple(x_train.shape[1:])}), {model.num_parameters():,} parameters, "
          f"{args.optimizer} lr {lr:g}, device {device}, precision {precision}"
          f"{', CUDA graph' if args.cuda_graph else ''}{parallel}", flush=True)
    train_step = make_train_step(dp.wrap(model), optimizer, autocast_dtype)
    if args.cuda_graph:
        from gpukernels.cuda_graph import GraphedStep  # noqa: PLC0415

        train_step = GraphedStep(train_step, warmup=3)
    start = time.perf_counter()
    images = busy = 0.0
    for epoch in range(first, args.epochs + 1):
        limit = DIVERGENCE_FACTOR * max(history["train_loss"][:1] + [np.log(num_classes)])
        dp.start_epoch(train, epoch, args.seed)
        try:
            with np.errstate(all="ignore"):  # overflow is caught as a non-finite loss instead
                loss, acc, seen, seconds = train_epoch(train_step, train, epoch, args.epochs, limit,
                                                       not args.no_progress and dp.is_main, args.log_every)
        except TrainError as exc:
            kept = (f"; the last good checkpoint ({args.checkpoint}, epoch {epoch - 1}) is kept"
                    if args.checkpoint and (epoch > 1) else "")
            raise TrainError(f"{exc}{kept}") from None
        test_acc = evaluate(model, test, autocast_dtype)
        loss, correct, seen, test_correct, test_total = dp.epoch_totals(
            loss, round(acc * seen), seen, round(test_acc * len(test.inputs)), len(test.inputs))
        acc, test_acc = correct / seen, test_correct / test_total
        images, busy = images + seen, busy + seconds
        for key, value in zip(history, (loss, acc, test_acc)):
            history[key].append(value)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {loss:.4f}  train acc {acc:.4f}  "
              f"test acc {test_acc:.4f}  {seen / seconds:,.0f} img/s", flush=True)
        if args.checkpoint and dp.is_main:
            save_checkpoint(args.checkpoint, args, lr, epoch, model, optimizer, train, history)
    seconds = time.perf_counter() - start
    if args.plot and dp.is_main:
        save_plot(args.plot, history)
        print(f"wrote {args.plot}")
    print(f"test accuracy {history['test_acc'][-1]:.4f}")
    return {
        "model": args.model, "dataset": args.dataset, "device": device,
        "epochs": args.epochs, "test_accuracy": round(history["test_acc"][-1], 4),
        "train_loss": round(history["train_loss"][-1], 4), "seconds": round(seconds, 2),
        "images_per_second": round(images / busy, 1) if busy else None,
        "optimizer": args.optimizer, "lr": lr, "batch_size": args.batch_size, "seed": args.seed,
        "precision": precision, "cuda_graph": args.cuda_graph,
        "parameters": model.num_parameters(), "world_size": dp.world_size,
        "global_batch_size": dp.world_size * args.batch_size,
    }


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    parallel = data_parallel.world_size_from_env() > 1
    where = f"rank {os.environ.get('RANK', '?')}: " if parallel else ""
    dp = None
    try:
        dp = data_parallel.setup(args.dist_timeout, args.sync_batchnorm)
        if not dp.is_main:  # one voice: rank 0 prints; every rank still reports its own error
            sys.stdout = open(os.devnull, "w")
        summary = run(args, dp)
    except (TrainError, DatasetError) as exc:
        data_parallel.reporting()
        print(f"error: {where}{exc}", file=sys.stderr)
        return 1
    except data_parallel.Stopped as exc:
        data_parallel.reporting()
        print(f"error: {where}{exc}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        data_parallel.reporting()
        kept = f"; the last checkpoint is {args.checkpoint}" if args.checkpoint else ""
        print(f"error: {where}interrupted{kept}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not parallel:
            raise
        data_parallel.reporting()
        # a peer that died closes its connections; a silent one trips the collective timeout
        text = " ".join(str(exc).split())
        print(f"error: {where}{type(exc).__name__}: {text[:300]} (another rank failed, or a collective "
              f"timed out after --dist-timeout {args.dist_timeout:g} s)", file=sys.stderr)
        return 1
    finally:
        if dp is not None:
            dp.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
