#!/usr/bin/env python3
"""Few labels in Python: ViT-MSN embeddings (vitmsn) + a scikit-learn logistic regression, scored by
stratified cross-validation. The Python twin of vitmsn-probe.

    python3 examples/python/few_shot.py --model weights/vit-msn-large-7.safetensors --data pets/

DATA holds one folder per class (class names = sorted folder names), images inside, searched
recursively for the formats vitmsn decodes; hidden files and folders are skipped.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import vitmsn


def default_model():
    return os.environ.get("VITMSN_MODEL") or str(Path(__file__).resolve().parents[2] /
                                                 "weights/vit-msn-large-7.safetensors")


def scan(data):
    """(paths, labels, class names) of an ImageFolder."""
    extensions = set(vitmsn.image_file_extensions())
    classes = sorted(d.name for d in Path(data).iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for k, name in enumerate(classes):
        for root, dirs, files in os.walk(Path(data) / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions:
                    paths.append(os.path.join(root, f))
                    labels.append(k)
    return paths, np.array(labels), classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model(), help="model folder or .safetensors "
                        "(default: $VITMSN_MODEL, else weights/vit-msn-large-7.safetensors)")
    parser.add_argument("--data", required=True, help="one folder per class")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5; at most the "
                        "size of the smallest class)")
    parser.add_argument("--pool", choices=["cls", "mean"], default="cls", help="embedding (default cls)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold shuffle (default 0)")
    args = parser.parse_args()

    try:
        model = vitmsn.Model(args.model)
        paths, y, classes = scan(args.data)
        if len(classes) < 2:
            raise vitmsn.Error(f"{args.data}: needs at least two class folders, found {len(classes)}")
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < 2:
            raise vitmsn.Error(f"{args.data}: class '{classes[int(np.argmin(counts))]}' has "
                               f"{counts.min()} image(s); every class needs at least 2")
        print(f"{len(paths)} images in {len(classes)} classes under {args.data}; model {model.source} "
              f"({args.pool.upper()}, {model.config['hidden_size']} dimensions)")
        start = time.monotonic()
        X = model.embed(paths, pool=args.pool, progress=sys.stderr.isatty())
    except vitmsn.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"features: {X.shape[0]} x {X.shape[1]} in {time.monotonic() - start:.1f} s")

    folds = min(args.folds, int(counts.min()))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=args.seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    predicted = cross_val_predict(probe, X, y, cv=cv)
    # Each fold's accuracy on its held-out images (what cross_val_score would give, without fitting the
    # folds a second time): cv's split is the same on every call, as its random_state is fixed.
    scores = np.array([np.mean(predicted[test] == y[test]) for _, test in cv.split(X, y)])
    print(f"cross-validation ({folds}-fold stratified, seed {args.seed}), StandardScaler + LogisticRegression:")
    print(f"  {'class':<16} {'images':>6}  accuracy")
    for k, name in enumerate(classes):
        mine = y == k
        print(f"  {name:<16} {int(mine.sum()):>6}  {100 * np.mean(predicted[mine] == k):7.1f}%")
    print(f"  {'overall':<16} {len(y):>6}  {100 * scores.mean():7.1f}%  (folds: "
          + ", ".join(f"{100 * s:.1f}%" for s in scores) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
