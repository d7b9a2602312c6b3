#!/usr/bin/env python3
"""Classify images with a model exported by `toolkit export`, on the toolkit's torch-free runtime package
(numpy, pillow, pyyaml and one engine: onnxruntime, openvino or tensorrt). The preprocessing contract (resize,
crop, mean/std, channel order, class names) is read from the model itself, by the same code that trained and
evaluated it: ONNX metadata ``toolkit.preprocess``, OpenVINO rt_info ``toolkit/preprocess``, or a TensorRT
engine's ``.json`` sidecar.

    python predict.py model.int8.onnx images/ --out predictions.csv          # folder (recursive) -> CSV
    python predict.py model.int8.openvino/model.xml a.jpg b.png --top-k 3
    python predict.py model.onnx --serve 8080      # POST image bytes to /predict -> JSON

Install the runtime with `pip install "edge-distill-toolkit[onnx]"`, or copy the repository's runtime/ folder
beside this file (what deploy/Dockerfile.* do).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

try:
    from PIL import Image

    from runtime.atomic import atomic_path
    from runtime.classifier import Classifier, open_classifier
    from runtime.errors import ToolkitError
    from runtime.images import IMAGE_EXTENSIONS, load_image
    from runtime.metrics import softmax
except ImportError as _missing:  # one line, not a traceback: this is the first thing a new device runs
    sys.exit(
        f"error: predict.py needs the toolkit's runtime package ({_missing}); pip install "
        "'edge-distill-toolkit[onnx]', or copy the repository's runtime/ folder beside predict.py"
    )


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named, and those under folders named (recursively, sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise ToolkitError(f"{p}: no such file or folder")
    if not files:
        raise ToolkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(inputs) or 'the arguments'}")
    return files


def batches(files: list[Path], size: int) -> Iterator[tuple[list[Path], list[Image.Image]]]:
    for start in range(0, len(files), size):
        chunk = files[start : start + size]
        yield chunk, [load_image(f) for f in chunk]


def top_k_row(probs, names: tuple[str, ...], k: int) -> list[str]:  # noqa: ANN001 - a numpy row
    row: list[str] = []
    for i in (-probs).argsort()[:k]:
        row += [names[i] if i < len(names) else str(i), f"{probs[i]:.6f}"]
    return row


def write_csv(model: Classifier, files: list[Path], out: Path, top_k: int, batch_size: int) -> None:
    """Rows of path, label, score (and the next top-k); the CSV appears only when every image went through."""
    names = model.contract.class_names
    header = ["path", "label", "score"] + [f"{kind}_{i}" for i in range(2, top_k + 1) for kind in ("label", "score")]
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for chunk, images in batches(files, batch_size):
            for f, p in zip(chunk, softmax(model.run(model.contract.batch(images)))):
                writer.writerow([str(f), *top_k_row(p, names, top_k)])


def serve(model: Classifier, port: int, top_k: int) -> None:
    """POST /predict with image bytes -> {"predictions": [{"label", "score"}...]}; GET /health -> ok."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    names = model.contract.class_names

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._reply(200, {"status": "ok"}) if self.path == "/health" else self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                return self._reply(404, {"error": "POST image bytes to /predict"})
            try:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with Image.open(io.BytesIO(body)) as im:
                    p = softmax(model.run(model.contract.batch([im.convert("RGB")])))[0]
            except (OSError, ValueError) as exc:
                return self._reply(400, {"error": f"not a readable image: {exc}"})
            top = (-p).argsort()[:top_k]
            self._reply(200, {"predictions": [{"label": names[k], "score": float(p[k])} for k in top]})

    print(f"serving on :{port} (POST /predict, GET /health)", file=sys.stderr)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def open_model(path: Path, provider: str | None, threads: int) -> Classifier:
    """The session for ``path``: --provider is an ONNX Runtime execution provider or an OpenVINO device."""
    if path.suffix == ".xml":
        return open_classifier(path, threads=threads or None, device=provider or "CPU")
    return open_classifier(path, [provider] if provider else None, threads or None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help=".onnx file, OpenVINO model.xml or TensorRT .engine from `toolkit export`")
    ap.add_argument("images", nargs="*", help="image files and/or folders (searched recursively)")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    ap.add_argument("--top-k", type=int, default=1, help="labels per image")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--provider", help="ONNX Runtime execution provider (e.g. TensorrtExecutionProvider) or "
                    "OpenVINO device (CPU, GPU)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = runtime default)")
    ap.add_argument("--serve", type=int, metavar="PORT", help="serve HTTP instead of predicting files")
    args = ap.parse_args(argv)
    try:
        if args.top_k < 1 or args.batch_size < 1:
            raise ToolkitError(f"--top-k ({args.top_k}) and --batch-size ({args.batch_size}) must be at least 1")
        model = open_model(args.model, args.provider, args.threads)
        top_k = min(args.top_k, len(model.contract.class_names) or args.top_k)
        if args.serve:
            serve(model, args.serve, top_k)
            return 0
        files = find_images(args.images)
        write_csv(model, files, args.out, top_k, args.batch_size)
        print(f"{len(files)} images -> {args.out}", file=sys.stderr)
        return 0
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out in a folder that cannot be written
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
