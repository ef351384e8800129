"""Check harmon's FID pieces against pytorch-fid's and clean-fid's own code, on the same inputs (no weights needed).

    pip download --no-deps pytorch-fid==0.3.0 clean-fid==0.1.35 torchvision==0.29.1 -d /tmp/fidref
    PYTHONPATH=src python scripts/check_fid_references.py --wheels /tmp/fidref

The wheels are unpacked into a temporary folder and imported from there; nothing is installed. torchvision's
compiled operators do not load beside the CPU torch wheel (``operator torchvision::nms does not exist``), but the
parts both packages use (the Inception-v3 model code, ``ToTensor``) are plain Python: the module that registers
the compiled operators is replaced by an empty one before torchvision is imported.

Compared, on random weights in pytorch-fid's layout (its module loads our state dict with a strict
``load_state_dict``; ours reads the same file through :func:`harmon.eval.inception.load_fid_inception`): the
network's pool3 features (pytorch-fid's ``InceptionV3``); the whole folder -> features path in legacy mode
(pytorch-fid's ``get_activations``) and in clean mode (clean-fid's ``get_folder_features`` with our network in
place of its TorchScript file); the Fréchet distance of the same feature arrays (pytorch-fid's
``calculate_frechet_distance``, clean-fid's ``frechet_distance``); KID (clean-fid's ``kernel_distance``, subsets =
the whole sets so that its global-RNG draw does not matter). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harmon.eval import fid
from harmon.eval.inception import FIDInceptionV3, load_fid_inception


def unpack(wheels: Path, into: Path) -> None:
    """Unpack every wheel of ``wheels`` into ``into`` and make it importable (torchvision's op registry stubbed)."""
    found = sorted(wheels.glob("*.whl"))
    names = {w.name.split("-")[0] for w in found}
    missing = {"pytorch_fid", "clean_fid", "torchvision"} - names
    if missing:
        raise SystemExit(f"{wheels}: no wheel for {sorted(missing)}; see this script's docstring")
    for w in found:
        with zipfile.ZipFile(w) as z:
            z.extractall(into)
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    sys.path.insert(0, str(into))


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled convolutions and non-trivial batch-norm statistics, so that every layer matters."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight") or k == "fc.weight":
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("running_var", "bn.weight")):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(("running_mean", "bn.bias")) or k == "fc.bias":
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = v
    return out


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Smooth random images (low-frequency noise upsampled), so resizing changes them the way photos change."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(folder / f"{i:03d}.png")
        paths.append(folder / f"{i:03d}.png")
    return paths


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def network_rows(ours: FIDInceptionV3, state: dict, tmp: Path) -> list[str]:
    import pytorch_fid.fid_score as pfs
    import pytorch_fid.inception as pin
    from cleanfid.fid import get_folder_features

    pin.load_state_dict_from_url = lambda *a, **k: {n: t.clone() for n, t in state.items()}  # no download
    ref = pin.InceptionV3([3]).eval()
    x = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref(x)[0].flatten(1)  # pytorch-fid resizes and scales inside its module
        b = ours(2 * torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear") - 1)
    rows = [f"| network, same input (pool3, 3 images) | pytorch-fid InceptionV3 | {(a - b).abs().max():.1e} |"]
    files = write_images(tmp / "imgs", 12, (80, 64), seed=2)
    theirs = pfs.get_activations(files, ref, batch_size=5, dims=2048, device="cpu", num_workers=0)
    mine = fid.folder_features(tmp / "imgs", ours, "legacy", batch_size=5).features
    rows.append(
        f"| folder -> features, legacy (12 PNGs) | pytorch-fid get_activations | {np.abs(theirs - mine).max():.1e} |"
    )
    cpu = torch.device("cpu")
    with torch.no_grad():  # clean-fid hands its network [0, 255] pixels; its TorchScript file scales them this way
        net = lambda t: ours((t - 128) / 128)  # noqa: E731
        theirs = get_folder_features(str(tmp / "imgs"), net, 0, batch_size=5, device=cpu, mode="clean", verbose=False)
    mine = fid.folder_features(tmp / "imgs", ours, "clean", batch_size=5).features
    rows.append(
        f"| folder -> features, clean (12 PNGs) | clean-fid get_folder_features | {np.abs(theirs - mine).max():.1e} |"
    )
    return rows


def distance_rows(seed: int = 3) -> list[str]:
    import cleanfid.fid as cf
    import pytorch_fid.fid_score as pfs

    rng = np.random.default_rng(seed)
    rows, worst_fid, worst_kid = [], 0.0, 0.0
    for n, d in ((50, 16), (300, 64), (40, 64), (500, 2048)):  # N < D: singular covariances
        f1 = rng.normal(size=(n, d))
        f2 = rng.normal(loc=0.2, size=(n, d)) @ (np.eye(d) + 0.1 * rng.normal(size=(d, d)))
        m1, s1, m2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
        ours = fid.frechet_distance(m1, s1, m2, s2)
        worst_fid = max(worst_fid, rel(ours, pfs.calculate_frechet_distance(m1, s1, m2, s2)))
        worst_fid = max(worst_fid, rel(ours, cf.frechet_distance(m1, s1, m2, s2)))
        kid = cf.kernel_distance(f1, f2, num_subsets=2, max_subset_size=n)
        worst_kid = max(worst_kid, rel(fid.kernel_distance(f1, f2, subset_size=n)[0], kid))
    rows.append(f"| Fréchet distance, 4 feature pairs (D 16-2048, N < D too) | both | {worst_fid:.1e} relative |")
    rows.append(f"| KID, same 4 pairs | clean-fid kernel_distance | {worst_kid:.1e} relative |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", required=True, type=Path, help="folder of the pip-downloaded wheels")
    args = p.parse_args()
    warnings.simplefilter("ignore")  # scipy's deprecation of sqrtm(disp=) in the references, torchvision's notes
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        unpack(args.wheels, Path(tmp) / "site")
        state = random_state_dict()
        torch.save(state, Path(tmp) / "random.pth")  # pytorch-fid's module loads the same dict strictly below
        ours = load_fid_inception(Path(tmp) / "random.pth")
        rows = network_rows(ours, state, Path(tmp))
        rows += distance_rows()
    print("| what | reference | max abs difference |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
