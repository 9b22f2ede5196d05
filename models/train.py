"""Train a model: ``python -m models.train --model cnn --dataset digits``.

Prints the loss and accuracy of every epoch, then the test accuracy, and as its last
line one JSON object (model, dataset, device, epochs, test_accuracy, train_loss,
seconds, images_per_second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import nn
from gpukernels.data import DataLoader, load_digits
from models.cnn import digits_cnn

MODELS = {
    "cnn": digits_cnn,
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
}
OPTIMIZERS = {
    "sgd": lambda p, lr, wd: gk.optim.SGD(p, lr=lr, weight_decay=wd),
    "momentum": lambda p, lr, wd: gk.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd),
    "adagrad": lambda p, lr, wd: gk.optim.Adagrad(p, lr=lr, weight_decay=wd),
    "rmsprop": lambda p, lr, wd: gk.optim.RMSprop(p, lr=lr, weight_decay=wd),
    "adam": lambda p, lr, wd: gk.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd: gk.optim.AdamW(p, lr=lr, weight_decay=wd),
}


def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    with gk.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1).numpy() == y.numpy()).sum())
            total += len(y)
    model.train()
    return correct / total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="cnn")
    p.add_argument("--dataset", choices=["digits"], default="digits")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1 and --lr > 0")

    gk.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits(seed=args.seed)
    train = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    test = DataLoader(x_test, y_test, 256)
    model = MODELS[args.model]()
    opt = OPTIMIZERS[args.optimizer](model.parameters(), args.lr, args.weight_decay)

    start = time.perf_counter()
    seen = 0
    for epoch in range(1, args.epochs + 1):
        losses = []
        for x, y in train:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            value = loss.item()
            if not np.isfinite(value):
                print(f"error: the loss became {value} at epoch {epoch}; lower --lr", file=sys.stderr)
                return 1
            losses.append(value)
            seen += len(y)
        print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  "
              f"train acc {evaluate(model, DataLoader(x_train, y_train, 256)):.4f}", flush=True)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test)
    print(f"test accuracy {accuracy:.4f}")
    print(json.dumps({
        "model": args.model, "dataset": args.dataset, "device": gk.get_backend(),
        "epochs": args.epochs, "test_accuracy": round(accuracy, 4),
        "train_loss": round(float(np.mean(losses)), 4), "seconds": round(seconds, 2),
        "images_per_second": round(seen / seconds, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
