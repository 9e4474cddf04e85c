r"""python -m resnet_jax.predict --weights=SOURCE IMAGE_OR_DIR... [--top=5] [--json]

Prints each image's most probable classes, as a table or as JSON lines. ``SOURCE`` is a
weights tag (``resnet50.torchvision_v2``), a converted directory, a training workdir (its
newest step; the EMA weights when the run kept them) or an export artifact; each brings
its own evaluation preprocessing and class names (``resnet_jax.classifier``). Folders are
searched for images and read in batches, with a progress bar. A missing or unreadable
image, an image of the wrong kind (grayscale for an RGB model) or a missing source is one
``error:`` line naming it, exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from resnet_jax import user_errors
from resnet_jax.classifier import Classifier
from resnet_jax.preprocessing import IMAGE_EXTENSIONS


def image_files(paths: Sequence[str]) -> list[str]:
    """The files named, and the image files under the folders named, sorted per folder."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, n)
                for root, _, names in os.walk(path)
                for n in names
                if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
            )
            if not found:
                raise ValueError(f"{path}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif not os.path.exists(path):
            raise ValueError(f"{path}: no such file or directory")
        else:
            files.append(path)
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = user_errors.Parser(prog="python -m resnet_jax.predict", description=__doc__.split("\n\n")[1])
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders")
    parser.add_argument("--weights", required=True, help="tag, converted dir, workdir or artifact")
    parser.add_argument("--model", default=None, help="the model of a bare weights tag (e.g. resnet50)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per image")
    parser.add_argument("--json", action="store_true", help="one JSON object per image, per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-ema", action="store_true", help="a workdir's live weights, not its EMA")
    args = parser.parse_args(argv)
    try:
        if args.top < 1 or args.batch_size < 1:
            raise ValueError(f"--top={args.top} and --batch-size={args.batch_size} must be >= 1")
        files = image_files(args.images)
        classifier = Classifier.load(args.weights, model=args.model, ema=False if args.no_ema else None)
        _run(classifier, files, args)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))


def _run(classifier: Classifier, files: list[str], args: Any) -> None:
    from tqdm.auto import tqdm

    width, header = max(len(f) for f in files), not args.json
    with tqdm(total=len(files), unit="image", disable=None, file=sys.stderr) as bar:
        for lo in range(0, len(files), args.batch_size):
            chunk = files[lo : lo + args.batch_size]
            probabilities = classifier.probabilities(chunk, args.batch_size)
            order = classifier.top_indices(probabilities, args.top)
            bar.clear()
            if header:  # once the first batch has been read: an error comes before any table
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
            bar.update(len(chunk))


if __name__ == "__main__":
    main(sys.argv[1:])
