"""The FID Inception-v3 feature network (pool3, 2048 features), built here in the layout of pytorch-fid's weights.

FID is only comparable between papers when everyone uses the same network: the TensorFlow graph
``inception-2015-12-05`` that the original FID code used. pytorch-fid ports its weights to PyTorch as a state dict of
torchvision's ``Inception3`` (1008 classes, no auxiliary head):

    file    pt_inception-2015-12-05-6726825d.pth (about 95 MB)
    from    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    sha256  6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2

The name carries the first 8 hex digits of the file's sha256 (the torch-hub naming convention); the full value is
the one published for torch-fidelity's copy of the same file (``weights-inception-2015-12-05-6726825d.pth``). A file
with another hash still loads when its keys and shapes fit (it is then reported as non-standard: its FIDs are not
comparable with published ones).

The network differs from torchvision's Inception-v3 where TensorFlow's graph does (facts read from pytorch-fid):
the 3x3 average pools inside Mixed_5b-5d, 6b-6e and 7b leave the zero padding out of the average, and the pooling
branch of the last block (Mixed_7c) is a 3x3 max pool. Every convolution is conv (no bias) -> batch norm
(eps 1e-3) -> ReLU. clean-fid's default network is a TorchScript file of the same TensorFlow graph
(``inception-2015-12-05.pt``); harmon reads pytorch-fid's state dict instead and builds the network in this module.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harmon.loading import check_state_dict, read_weights

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FEATURE_DIM = 2048  # pool3: the last average pool, the layer every FID implementation reads
INPUT_SIZE = 299  # the resolution the network was trained at; inputs are resized to it
NUM_CLASSES = 1008  # TensorFlow's ImageNet head (1000 classes + 8 unused): kept so the weight file loads strictly


def weights_help() -> str:
    """Where the standard weights come from, for error messages and --help."""
    return f"download {WEIGHTS_NAME} from {WEIGHTS_URL} (sha256 {WEIGHTS_SHA256}) and pass its path"


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, TensorFlow's) -> ReLU; keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_3x3(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The pooling branch's 3x3 stride-1 pool: TensorFlow's average (padding left out of the mean) or a max."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 -> 224 + pool_features channels."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool_3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), b5, b3, bp], dim=1)  # (B, 224 + pool_features, H, W)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), b3, bp], dim=1)  # (B, 768, 17, 17) from 288 channels


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1) -> 768 channels."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(d))))
        bp = self.branch_pool(_pool_3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), b7, d, bp], dim=1)  # (B, 768, 17, 17)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)  # (B, 1280, 8, 8) from 768 channels


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs -> 2048 channels; ``pool`` is "avg" (Mixed_7b) or "max" (Mixed_7c)."""

    def __init__(self, c_in: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], dim=1)  # (B, 768, 8, 8)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1)  # (B, 768, 8, 8)
        bp = self.branch_pool(_pool_3x3(x, self.pool))
        return torch.cat([self.branch1x1(x), b3, d, bp], dim=1)  # (B, 2048, 8, 8)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as FID uses it: (B, 3, 299, 299) inputs in [-1, 1] -> (B, 2048) pool3 features.

    Parameter names follow torchvision's ``Inception3`` (the layout of pytorch-fid's weight file), ``fc``
    included (unused by FID, kept so that loading is strict). Resizing and scaling to [-1, 1] happen before
    (:func:`harmon.eval.fid.inception_input`), so the two resize modes share this network.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")  # TensorFlow's graph max-pools here (pytorch-fid's note)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1], normally 299 x 299. Returns pool3 features (B, 2048)."""
        x = self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048): the global average pool


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (clean-fid's ``inception-2015-12-05.pt``) carries its code under ``*/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def load_fid_inception(path: str | Path, device: torch.device | str | None = None) -> FIDInceptionV3:
    """The FID network with the weights of ``path`` (pytorch-fid's state dict), in eval mode, float32.

    Loading is strict: a file whose keys or shapes differ is refused with the missing, unexpected and misshaped
    keys named (the batch-norm step counters ``num_batches_tracked`` may be absent: they play no part at eval).
    The model's ``sha256`` attribute holds the file's hash and ``standard`` whether it is :data:`WEIGHTS_SHA256`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found: {path}; {weights_help()}")
    if _is_torchscript(path):
        raise ValueError(
            f"{path} is a TorchScript archive (clean-fid's inception-2015-12-05.pt?); harmon builds the network "
            f"itself and reads pytorch-fid's state dict: {weights_help()}"
        )
    with torch.device("meta"):  # no random init of 24M parameters that the file replaces
        model = FIDInceptionV3()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = read_weights(path)
    optional = tuple(k for k in expected if k.endswith("num_batches_tracked"))
    check_state_dict(expected, state, str(path), optional=optional)
    for k in optional:
        state.setdefault(k, torch.zeros((), dtype=torch.long))
    model.load_state_dict(state, strict=True, assign=True)
    model.sha256 = file_sha256(path)
    model.standard = model.sha256 == WEIGHTS_SHA256
    if not model.standard:
        logger.warning(
            "FID Inception weights %s have sha256 %s, not the standard %s: the distances are not comparable with "
            "published FIDs",
            path,
            model.sha256,
            WEIGHTS_SHA256,
        )
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
