#!/usr/bin/env python3
"""Classify images with a model exported by `toolkit export`, needing only numpy, pillow and onnxruntime
(or openvino). The preprocessing contract (resize, crop, mean/std, channel order, class names) is read from
the model itself: ONNX metadata ``toolkit.preprocess``, or the OpenVINO IR's ``toolkit/preprocess`` rt_info.

    python predict.py model.int8.onnx images/ --out predictions.csv          # folder (recursive) -> CSV
    python predict.py model.int8.openvino/model.xml a.jpg b.png --top-k 3
    python predict.py model.onnx --serve 8080      # POST image bytes to /predict -> JSON

Deliberately standalone: this file is copied into deployment images without the toolkit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}  # fmt: skip


class PredictError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Contract:
    """The toolkit's preprocessing contract: resize (shorter side or squash) -> center crop -> normalise -> CHW."""

    def __init__(self, d: dict) -> None:
        try:
            self.height, self.width = (int(v) for v in d["input_size"])
            self.resize_size, self.resize_mode = int(d["resize_size"]), d["resize_mode"]
            self.resample = RESAMPLE[d["interpolation"]]
            self.mean = np.asarray(d["mean"], np.float32)
            self.std = np.asarray(d["std"], np.float32)
            self.bgr = d["channel_order"] == "BGR"
            self.class_names = list(d["class_names"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictError(f"the model's preprocessing metadata is incomplete or invalid ({exc!r})") from exc

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        w, h = image.size
        if self.resize_mode == "squash":
            new_w = new_h = self.resize_size
        elif w <= h:
            new_w, new_h = self.resize_size, max(1, int(self.resize_size * h / w))
        else:
            new_w, new_h = max(1, int(self.resize_size * w / h)), self.resize_size
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=self.resample)
        left, top = int(round((new_w - self.width) / 2.0)), int(round((new_h - self.height) / 2.0))
        if (left, top, self.width, self.height) != (0, 0, new_w, new_h):
            image = image.crop((left, top, left + self.width, top + self.height))
        x = (np.asarray(image).astype(np.float32) / 255.0 - self.mean) / self.std
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(2, 0, 1))


class Model:
    """An ONNX model on ONNX Runtime, or an OpenVINO IR (model.xml) on OpenVINO; logits for NCHW batches."""

    def __init__(self, path: Path, provider: str | None = None, threads: int = 0) -> None:
        if not path.is_file():
            raise PredictError(f"{path}: model file not found")
        if path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            available = ort.get_available_providers()
            if provider and provider not in available:
                raise PredictError(f"execution provider {provider} is not in this onnxruntime ({', '.join(available)})")
            self.session = ort.InferenceSession(str(path), options, providers=[provider] if provider else None)
            meta = self.session.get_modelmeta().custom_metadata_map
            if "toolkit.preprocess" not in meta:
                raise PredictError(f"{path}: no toolkit.preprocess metadata; export the model with `toolkit export`")
            self.contract = Contract(json.loads(meta["toolkit.preprocess"]))
            self.input = self.session.get_inputs()[0].name
            self.run = lambda x: self.session.run(None, {self.input: x})[0]
        elif path.suffix == ".xml":
            import openvino as ov

            core = ov.Core()
            model = core.read_model(str(path))
            if not model.has_rt_info(["toolkit", "preprocess"]):
                raise PredictError(f"{path}: no toolkit/preprocess rt_info; export the model with `toolkit export`")
            self.contract = Contract(json.loads(model.get_rt_info(["toolkit", "preprocess"]).astype(str)))
            config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
            compiled = core.compile_model(model, provider or "CPU", config)
            self.run = lambda x: next(iter(compiled(x).values()))
        else:
            raise PredictError(f"{path}: expected a .onnx file or an OpenVINO model.xml")

    def predict(self, images: list[Image.Image]) -> np.ndarray:
        """Softmax probabilities (N, C)."""
        logits = np.asarray(self.run(np.stack([self.contract(im) for im in images])), np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def find_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise PredictError(f"{p}: no such file or folder")
    if not files:
        raise PredictError(f"no images ({', '.join(sorted(EXTENSIONS))}) in {', '.join(inputs)}")
    return files


def batches(files: list[Path], size: int) -> Iterator[tuple[list[Path], list[Image.Image]]]:
    for start in range(0, len(files), size):
        chunk = files[start : start + size]
        images = []
        for f in chunk:
            try:
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
            except OSError as exc:
                raise PredictError(f"{f}: not a readable image ({exc})") from exc
        yield chunk, images


def write_csv(model: Model, files: list[Path], out: Path, top_k: int, batch_size: int) -> None:
    """Rows of path, label, score (and the next top-k); written to a temp file, then renamed."""
    names = model.contract.class_names
    header = ["path", "label", "score"] + [f"{kind}_{i}" for i in range(2, top_k + 1) for kind in ("label", "score")]
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for chunk, images in batches(files, batch_size):
                for f, p in zip(chunk, model.predict(images)):
                    order = np.argsort(-p)[:top_k]
                    row = [str(f)]
                    for k in order:
                        row += [names[k] if k < len(names) else str(k), f"{p[k]:.6f}"]
                    writer.writerow(row)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def serve(model: Model, port: int, top_k: int) -> None:
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
                    p = model.predict([im.convert("RGB")])[0]
            except (OSError, ValueError) as exc:
                return self._reply(400, {"error": f"not a readable image: {exc}"})
            top = np.argsort(-p)[:top_k]
            self._reply(200, {"predictions": [{"label": names[k], "score": float(p[k])} for k in top]})

    print(f"serving on :{port} (POST /predict, GET /health)", file=sys.stderr)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help=".onnx file or OpenVINO model.xml written by `toolkit export`")
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
            raise PredictError("--top-k and --batch-size must be at least 1")
        model = Model(args.model, args.provider, args.threads)
        top_k = min(args.top_k, len(model.contract.class_names) or args.top_k)
        if args.serve:
            serve(model, args.serve, top_k)
            return 0
        files = find_images(args.images)
        write_csv(model, files, args.out, top_k, args.batch_size)
        print(f"{len(files)} images -> {args.out}", file=sys.stderr)
        return 0
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
