"""FID and KID: Inception features of image folders, their statistics, and the distances between two sets.

Resize modes (``--resize``), both to the network's 299 x 299:
    clean   clean-fid's "clean" mode (its default): each channel of the 8-bit image, as float32, is resized by PIL's
            bicubic filter (antialiased when shrinking), clipped to [0, 255] and scaled as (x - 128) / 128, the
            scaling of the TensorFlow graph.
    legacy  pytorch-fid's: pixels / 255, torch bilinear interpolation (align_corners=False, no antialiasing),
            then 2 x - 1.
Which one the paper's MJHQ-30K FID (5.15) used is unknown: neither arXiv 2503.21979 nor github.com/wusize/Harmon
names the FID code, the resize or the resolution of the number (the repository's only FID code, MAR's ImageNet
evaluation through torch-fidelity, is not the MJHQ one). Playground's MJHQ-30K card says its own FIDs were computed
at 1024 x 1024.

A statistics file (``.npz``) holds ``mu`` (D,) and ``sigma`` (D, D) of the whole set in float64, the two keys of
pytorch-fid's and clean-fid's statistics files (so either tool reads ours for the overall FID), and beside them
``features`` (N, D) float32, ``files`` and ``categories`` (N,), ``resize`` and ``inception_sha256``. Per-category
FIDs and KID need the features; a file with only ``mu`` and ``sigma`` (pytorch-fid's ``--save-stats``) gives the
overall FID.

Fréchet distance (Heusel et al. 2017): d² = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), in float64, the square root
by ``scipy.linalg.sqrtm``. When the product is too close to singular for a finite root, ε = 1e-6 is added to both
diagonals (pytorch-fid's ε). An imaginary part left by rounding is dropped, but one on the diagonal above
1e-3 x max(1, largest real diagonal entry) is an error: pytorch-fid's rule (bound 1e-3) wherever the root's diagonal
stays below 1, as it does for Inception features, and relative for features of a larger scale.

KID (Bińkowski et al. 2018): the unbiased MMD² estimate with the kernel k(x, y) = (xᵀy / D + 1)³, averaged over
random subsets of up to 1000 images per side (clean-fid's and torch-fidelity's sizes); it has no small-sample bias,
so it is the number to read for small sets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from harmon.atomic import atomic_write, is_temp
from harmon.eval.inception import INPUT_SIZE, FIDInceptionV3

logger = logging.getLogger(__name__)

RESIZE_MODES = ("clean", "legacy")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FID_EPS = 1e-6  # pytorch-fid's diagonal offset for a near-singular covariance product
IMAG_TOLERANCE = 1e-3  # pytorch-fid's bound on the diagonal's imaginary part after sqrtm


# ---- pixels to features -------------------------------------------------------------------------------------


def _clean_resize(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (299, 299, 3) float32 in [0, 255]: PIL bicubic on each channel as a float image."""
    channels = [
        np.asarray(Image.fromarray(pixels[:, :, c].astype(np.float32)).resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def inception_input(images: Sequence[Image.Image], resize: str = "clean") -> torch.Tensor:
    """The network's input for ``images`` (any sizes, converted to RGB): (B, 3, 299, 299) float32 in [-1, 1]."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        if resize == "clean":
            x = torch.from_numpy(_clean_resize(pixels)).permute(2, 0, 1)  # (3, 299, 299) in [0, 255]
            out.append((x - 128.0) / 128.0)
        else:
            x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            out.append(2.0 * x[0] - 1.0)
    return torch.stack(out)  # (B, 3, 299, 299)


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursively, sorted), relative to it; hidden and temp files left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    files = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not is_temp(p)
    ]
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files)


def category_of(relative: str) -> str:
    """An image's category: the first folder of its path under the root ("" for a file at the root)."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else ""


def _open_rgb(item: Image.Image | str | Path) -> Image.Image:
    """An image as both references read files: ``Image.open(path).convert("RGB")``, no EXIF rotation."""
    if isinstance(item, Image.Image):
        return item
    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {item}: {err}") from err


class _Inputs(torch.utils.data.Dataset):
    """Network inputs (3, 299, 299) of images or files, one per item, so DataLoader workers can resize in parallel."""

    def __init__(self, items: Sequence[Image.Image | str | Path], resize: str) -> None:
        self.items, self.resize = items, resize

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return inception_input([_open_rgb(self.items[i])], self.resize)[0]


@torch.no_grad()
def image_features(
    images: Sequence[Image.Image | str | Path],
    model: FIDInceptionV3,
    resize: str = "clean",
    batch_size: int = 50,
    num_workers: int = 0,
) -> np.ndarray:
    """Pool3 features (N, 2048) float32 of PIL images or image files, ``batch_size`` at a time.

    ``num_workers``: processes that read and resize in parallel (the clean resize of a 1024 px image costs more
    than the network's forward on a GPU).
    """
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_Inputs(images, resize), batch_size=batch_size, num_workers=num_workers)
    out = []
    for n, x in enumerate(loader):  # x: (b, 3, 299, 299)
        out.append(model(x.to(device)).float().cpu().numpy())  # (b, 2048)
        if (n + 1) % 20 == 0:
            logger.info("fid: %d/%d images encoded", min((n + 1) * batch_size, len(images)), len(images))
    return np.concatenate(out, axis=0)


# ---- statistics ---------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Statistics of one image set: mean (D,) and covariance (D, D) in float64, and, when kept, the features."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None  # (N, D) float32
    files: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    resize: str | None = None
    inception_sha256: str | None = None

    @classmethod
    def from_features(
        cls,
        features: np.ndarray,
        files: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        resize: str | None = None,
        inception_sha256: str | None = None,
    ) -> FeatureSet:
        """Mean and unbiased covariance (``np.cov``, as pytorch-fid and clean-fid) of features (N, D), N >= 2."""
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features of at least 2 images as (N, D), got shape {features.shape}")
        f64 = features.astype(np.float64)
        files = list(files)
        cats = list(categories) if categories is not None else [category_of(f) for f in files]
        mu, sigma = f64.mean(axis=0), np.cov(f64, rowvar=False)  # (D,), (D, D)
        return cls(mu, sigma, len(features), features.astype(np.float32), files, cats, resize, inception_sha256)

    def category_names(self) -> list[str]:
        """Named categories present (sorted), when per-image categories are known."""
        return sorted({c for c in self.categories if c}) if self.features is not None else []

    def category(self, name: str) -> FeatureSet:
        """The statistics of the images of one category."""
        keep = [i for i, c in enumerate(self.categories) if c == name]
        return FeatureSet.from_features(
            self.features[keep], [self.files[i] for i in keep], [name] * len(keep), self.resize, self.inception_sha256
        )

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` described in the module docstring, atomically."""
        arrays: dict[str, Any] = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n)}
        if self.features is not None:
            arrays.update(features=self.features, files=np.array(self.files, dtype=str))
            arrays["categories"] = np.array(self.categories, dtype=str)
        arrays.update(resize=np.array(self.resize or ""), inception_sha256=np.array(self.inception_sha256 or ""))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the temp name
                np.savez(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read ours, or any ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid's and clean-fid's statistics)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such statistics file: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not an FID statistics file (no {', '.join(missing)}; has {z.files})")
            text = {k: str(z[k]) if k in z.files else "" for k in ("resize", "inception_sha256")}
            features = z["features"] if "features" in z.files else None
            return cls(
                z["mu"].astype(np.float64),
                z["sigma"].astype(np.float64),
                int(z["n"]) if "n" in z.files else (len(features) if features is not None else 0),
                features,
                [str(f) for f in z["files"]] if "files" in z.files else [],
                [str(c) for c in z["categories"]] if "categories" in z.files else [],
                text["resize"] or None,
                text["inception_sha256"] or None,
            )


# ---- distances ----------------------------------------------------------------------------------------------


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FID_EPS
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): means (D,), covariances (D, D), in float64."""
    try:
        from scipy import linalg
    except ImportError as err:  # an optional dependency: only FID needs it
        raise ImportError("FID needs scipy: pip install 'harmon[fid]' (or scipy)") from err
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        shapes = f"means {mu1.shape} / {mu2.shape}, covariances {sigma1.shape} / {sigma2.shape}"
        raise ValueError(f"statistics do not match: {shapes}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("fid: the covariance product is near singular; adding %g to both diagonals", eps)
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # pytorch-fid's absolute bound, made relative for features whose scale is far above Inception's
        scale = max(1.0, float(np.abs(np.diagonal(covmean).real).max()))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_TOLERANCE * scale):
            raise ValueError(f"fid: sqrtm left an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kernel_distance(
    features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over subsets of the unbiased MMD² with the cubic polynomial kernel.

    features1 (N1, D), features2 (N2, D); each subset takes m = min(N1, N2, subset_size) images of each side
    without replacement, drawn from ``np.random.default_rng(seed)``.
    """
    m = min(len(features1), len(features2), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per side, got {len(features1)} and {len(features2)}")
    d = features1.shape[1]
    rng = np.random.default_rng(seed)
    if m == len(features1) == len(features2):
        num_subsets = 1  # every subset is the whole of both sets: the estimate does not depend on the draw
    values = []
    for _ in range(num_subsets):
        x = features1[rng.choice(len(features1), m, replace=False)].astype(np.float64)  # (m, D)
        y = features2[rng.choice(len(features2), m, replace=False)].astype(np.float64)  # (m, D)
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))  # (m, m) each
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _check_comparable(a: FeatureSet, b: FeatureSet) -> None:
    for name in ("resize", "inception_sha256"):
        va, vb = getattr(a, name), getattr(b, name)
        if va and vb and va != vb:
            raise ValueError(f"the two sets were encoded with another {name} ({va} vs {vb}): encode both alike")


def compare_sets(
    generated: FeatureSet, reference: FeatureSet, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """FID (and KID where both sides kept features) overall and for every category present on both sides.

    Returns {"rows": [{"category", "fid", "kid", "kid_std", "n_generated", "n_reference"}, ...], ...}; the first
    row is "overall", then the shared categories in sorted order.
    """
    _check_comparable(generated, reference)
    pairs = [("overall", generated, reference)]
    shared = sorted(set(generated.category_names()) & set(reference.category_names()))
    pairs += [(c, generated.category(c), reference.category(c)) for c in shared]
    rows = []
    for name, g, r in pairs:
        row = {"category": name, "fid": frechet_distance(g.mu, g.sigma, r.mu, r.sigma)}
        if g.features is not None and r.features is not None:
            row["kid"], row["kid_std"] = kernel_distance(g.features, r.features, kid_subsets, kid_subset_size, seed)
        rows.append({**row, "n_generated": g.n, "n_reference": r.n})
    return {"rows": rows, "resize": generated.resize or reference.resize, "feature_dim": len(generated.mu)}


def format_fid_table(result: dict[str, Any]) -> str:
    """A markdown table of :func:`compare_sets`' rows (KID x 10³, as papers print it)."""
    lines = ["| category | FID | KID x 1e3 | n generated | n reference |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        kid = f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f}" if "kid" in r else "-"
        lines.append(f"| {r['category']} | {r['fid']:.2f} | {kid} | {r['n_generated']} | {r['n_reference']} |")
    return "\n".join(lines)


def folder_features(
    folder: str | Path, model: FIDInceptionV3, resize: str = "clean", batch_size: int = 50, num_workers: int = 0
) -> FeatureSet:
    """Encode every image under ``folder`` (categories from the first sub-folder, MJHQ-30K's layout)."""
    files = list_images(folder)
    features = image_features([Path(folder) / f for f in files], model, resize, batch_size, num_workers)
    return FeatureSet.from_features(features, files, None, resize, getattr(model, "sha256", None))


def reference_set(
    reference: str | Path,
    model: FIDInceptionV3,
    resize: str = "clean",
    batch_size: int = 50,
    save: str | None = None,
    num_workers: int = 0,
) -> FeatureSet:
    """The reference statistics: a ``.npz`` read as is, or a folder encoded (and saved to ``save`` when given)."""
    reference = Path(reference)
    if reference.suffix == ".npz":
        stats = FeatureSet.load(reference)
        if not stats.resize:
            logger.warning("fid: %s does not record its resize or network; assuming they match this run", reference)
        return stats
    stats = folder_features(reference, model, resize, batch_size, num_workers)
    if save:
        stats.save(save)
        logger.info("fid: reference statistics of %d images saved to %s", stats.n, save)
    return stats
