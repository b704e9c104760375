"""``facedex bench extract``: how fast photos become descriptors on this machine.

On the real photos of :mod:`facedex.bench.photos` (face_recognition's test
images and scikit-image's astronaut), through the same code the API runs
(:class:`facedex.extractor.extract.LocalExtractor`):

- per image: decode + detect + align + SFace for the largest face, median over
  repeats, one image at a time;
- per stage: decode, detection, one face's alignment + descriptor;
- throughput: images/s with 1 and 2 workers, OpenCV held to one thread per
  worker (the service's setting), and with OpenCV's own threading for comparison.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import cv2

from facedex import wire
from facedex.bench.common import machine, machine_line, median_s
from facedex.bench.photos import astronaut_png, face_recognition_photos
from facedex.config import ExtractionSettings
from facedex.extractor.extract import LocalExtractor
from facedex.extractor.images import decode


def _median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    return median_s(fn, repeat) * 1000


def run(repeat: int, total: int) -> dict[str, object]:
    photos = {**face_recognition_photos(), "astronaut": astronaut_png()}
    settings = ExtractionSettings()
    rows = []
    extractor = LocalExtractor(settings.model_copy(update={"workers": 1}))
    cv2.setNumThreads(1)
    pipeline = extractor.pipelines.get()
    for name, data in sorted(photos.items()):
        image = decode(data, settings.max_image_bytes, settings.max_image_pixels, settings.detect_side)
        rows_found = pipeline.detect(image.pixels)
        crop = pipeline.align(image.pixels, rows_found[0, 4:14].reshape(5, 2))
        rows.append({
            "image": name,
            "bytes": len(data),
            "size": f"{image.width}x{image.height}",
            "faces": len(rows_found),
            "image_ms": _median_ms(lambda d=data: extractor.extract_sync(d, None, False), repeat),
            "decode_ms": _median_ms(lambda d=data: decode(d, settings.max_image_bytes, settings.max_image_pixels, settings.detect_side), repeat),
            "detect_ms": _median_ms(lambda px=image.pixels: pipeline.detect(px), repeat),
            "face_ms": _median_ms(lambda px=image.pixels, r=rows_found[0]: pipeline.embed([pipeline.align(px, r[4:14].reshape(5, 2))]), repeat),
        })
        del crop
    throughput = {}
    items = list(photos.values())
    for label, workers, cv_threads in (("1 worker", 1, 1), ("2 workers", 2, 1), ("1 worker, OpenCV threads", 1, 0)):
        ex = LocalExtractor(settings.model_copy(update={"workers": workers}))
        cv2.setNumThreads(cv_threads if cv_threads else -1)

        async def drive(ex: LocalExtractor = ex) -> float:
            await asyncio.gather(*(ex.extract(items[i % len(items)], None, False) for i in range(2 * workers)))  # warm
            started = time.perf_counter()
            results: list[wire.ExtractResponse] = await asyncio.gather(
                *(ex.extract(items[i % len(items)], None, False) for i in range(total))
            )
            assert all(r.faces for r in results)
            return total / (time.perf_counter() - started)

        throughput[label] = asyncio.run(drive())
        asyncio.run(ex.close())
    cv2.setNumThreads(1)
    return {"benchmark": "extract", "machine": machine(), "repeat": repeat, "total": total, "rows": rows, "throughput": throughput}


def markdown(record: dict[str, object], command: str) -> str:
    rows = record["rows"]  # type: ignore[assignment]
    lines = [
        "## Faces from images (YuNet + SFace on the CPU)",
        "",
        f"Machine: {machine_line(record['machine'])}; OpenCV {cv2.__version__}.  ",  # type: ignore[arg-type]
        "Data: the face_recognition 1.3.0 test photos and scikit-image's astronaut (one face each); detection on the "
        "image scaled to 640 px on its long side, the descriptor from the full-resolution crop.  ",
        f"Command: `{command}`",
        "",
        "| image | bytes | pixels | faces | per image (ms) | decode (ms) | detect (ms) | per face: align + SFace (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:  # type: ignore[union-attr]
        lines.append(f"| {r['image']} | {r['bytes']:,} | {r['size']} | {r['faces']} | {r['image_ms']:.1f} | "
                     f"{r['decode_ms']:.1f} | {r['detect_ms']:.1f} | {r['face_ms']:.1f} |")
    med = statistics.median
    lines.append(f"| **median** | | | | **{med(r['image_ms'] for r in rows):.1f}** | {med(r['decode_ms'] for r in rows):.1f} | "  # type: ignore[union-attr]
                 f"{med(r['detect_ms'] for r in rows):.1f} | **{med(r['face_ms'] for r in rows):.1f}** |")  # type: ignore[union-attr]
    lines += ["", f"Throughput over {record['total']} images (the photos in turn, concurrent requests through the API's extractor):", "",
              "| workers | images/s |", "|---|---|"]
    for label, value in record["throughput"].items():  # type: ignore[union-attr]
        lines.append(f"| {label} | {value:.1f} |")
    lines += ["", f"Medians of {record['repeat']} runs each, one image at a time, OpenCV on one thread. "
              "The service runs `extraction.workers` (default 2) images at once, one OpenCV thread each."]
    return "\n".join(lines)
