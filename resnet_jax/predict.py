"""python -m resnet_jax.predict --weights=SOURCE IMAGE_OR_DIR... [--top=5] [--json]

Prints each image's most probable classes, as a table or as JSON lines. --weights takes
a weights tag (resnet50.torchvision_v2), a converted directory, a training workdir (its
newest step; the EMA weights when the run kept them, --no-ema for the live ones) or an
export artifact; each brings its own evaluation preprocessing and class names. Folders
are searched for images and read in batches.

A progress bar shows on stderr when stderr is a terminal and there is more than one
batch. Grayscale and CMYK images are converted to the model's channels, as the trainer
converts them. A file that does not decode is skipped and named on stderr, and the others
are still classified. Exit status: 0, every image classified; 2, some images skipped
(counted at the end); 1, an error before any result (a missing path or source, a bad
flag), as one "error:" line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from resnet_jax import user_errors
from resnet_jax.classifier import Classifier, image_files

SKIPPED_STATUS = 2


def main(argv: Sequence[str] | None = None) -> None:
    paragraphs = __doc__.split("\n\n")
    parser = user_errors.Parser(
        prog="python -m resnet_jax.predict", description=paragraphs[1], epilog=paragraphs[2]
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders")
    parser.add_argument(
        "--weights", required=True, metavar="SOURCE", help="tag, converted dir, workdir or artifact"
    )
    parser.add_argument("--model", default=None, help="the model of a bare weights tag (e.g. resnet50)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per image")
    parser.add_argument("--json", action="store_true", help="one JSON object per image, per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-ema", action="store_true", help="a workdir's live weights, not its EMA")
    args = parser.parse_args(argv)
    try:
        for flag, value in (("--top", args.top), ("--batch-size", args.batch_size)):
            if value < 1:
                raise ValueError(f"{flag}={value}: must be >= 1")
        files = image_files(args.images)
        classifier = Classifier.load(args.weights, model=args.model, ema=False if args.no_ema else None)
        skipped = _run(classifier, files, args)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))
    if skipped:
        print(
            f"{skipped} of {len(files)} images skipped (named above): exit status {SKIPPED_STATUS}",
            file=sys.stderr,
        )
        sys.exit(SKIPPED_STATUS)


def _run(classifier: Classifier, files: list[str], args: Any) -> int:
    """Prints each file's top classes; returns how many files were skipped."""
    from tqdm.auto import tqdm

    width, header, skipped = max(len(f) for f in files), not args.json, 0
    disable = None if len(files) > args.batch_size else True
    with tqdm(total=len(files), unit="image", disable=disable, file=sys.stderr) as bar:
        for lo in range(0, len(files), args.batch_size):
            chunk, inputs = [], []
            for file in files[lo : lo + args.batch_size]:
                try:
                    inputs.append(classifier.input(file))
                    chunk.append(file)
                except (OSError, ValueError) as e:
                    bar.clear()
                    print(f"skipped {e}", file=sys.stderr, flush=True)
                    skipped += 1
            bar.update(len(files[lo : lo + args.batch_size]))
            if not chunk:
                continue
            probabilities = classifier.forward_inputs(np.stack(inputs))
            order = classifier.top_indices(probabilities, args.top)
            bar.clear()
            if header:  # once the first image has been read
                print(f"{classifier.description}: {classifier.preprocessing.describe()}")
                print(f"{'image':{width}}  rank  probability  class")
                header = False
            for file, p, row in zip(chunk, probabilities, order):
                if args.json:
                    names = classifier.class_names
                    top = [{"index": int(i), "name": names[i], "probability": float(p[i])} for i in row]
                    print(json.dumps({"image": file, "top": top}), flush=True)
                    continue
                for rank, i in enumerate(row, 1):
                    shown = file if rank == 1 else ""
                    print(f"{shown:{width}}  {rank:4d}  {p[i]:11.4f}  {classifier.class_names[i]} ({i})")
            sys.stdout.flush()
    return skipped


if __name__ == "__main__":
    main(sys.argv[1:])
