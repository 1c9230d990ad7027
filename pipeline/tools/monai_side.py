"""The MONAI half of `medtfx bench train` / `medtfx bench infer`, run by .venv-monai's Python 3.11
(torch CPU wheel + MONAI, pipeline/tools/monai-requirements.txt). No TensorFlow or medtfx imports:
this file needs only the standard library, numpy, torch and monai.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout (the medtfx side,
pipeline/tools/bench_train.py `MonaiSide`, drives it so both sides run interleaved). Requests:

  {"op": "network", "net": NET}                      -> {"params": int}
  {"op": "train_setup", "net": NET, "patch": [X, Y, Z], "batch": B, "precision": P, "lr": float}
                                                     -> {"params": int}
  {"op": "train", "precision": P, "steps": n}        -> {"seconds": [n per-step wall times]}
  {"op": "infer_setup", "net": NET, "shape": [X, Y, Z], "patch": [...], "overlap": float,
   "mirror_axes": [...], "precision": P}             -> {"params": int}
  {"op": "infer", "key": str[, "warmup_shape": [X, Y, Z]]}
                                                     -> {"seconds": float, "peak_rss_mb": float, "mask_sha": str}
  {"op": "matmul", "n": int, "dtype": "float32" | "bfloat16"} -> {"gflops": float}
  {"op": "quit"}

NET: {"in_channels", "num_classes", "filters": [...], "kernel_sizes": [[kx, ky, kz], ...] (one per
level), "pool_sizes": [[px, py, pz], ...] (one per downsampling)}, the medtfx plan's topology.
P: "float32" | "bfloat16" (torch.autocast("cpu", torch.bfloat16) around forward and loss).
Errors come back as {"error": "one line"}.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
import traceback

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.nets import DynUNet


def build_dynunet(net: dict) -> torch.nn.Module:
    """MONAI's DynUNet configured as the medtfx U-Net (modules/networks/unet.py): the same levels,
    filters, per-axis kernels and pooling factors (DynUNet downsamples with a strided first
    convolution where medtfx max-pools, same weights and compute), instance norm with affine
    scale/shift (Keras GroupNormalization(groups=channels)), LeakyReLU(0.01), transposed
    convolutions with bias (Keras Conv3DTranspose's default), no deep supervision, and each
    decoder level convolving with its own level's kernel (see below)."""
    pools = [list(p) for p in net["pool_sizes"]]
    kernels = [list(k) for k in net["kernel_sizes"]]
    norm = ("INSTANCE", {"affine": True})
    act = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
    model = DynUNet(
        spatial_dims=3,
        in_channels=int(net.get("in_channels", 1)),
        out_channels=int(net["num_classes"]),
        kernel_size=kernels,
        strides=[[1, 1, 1]] + pools,
        upsample_kernel_size=pools,
        filters=[int(f) for f in net["filters"]],
        norm_name=norm,
        act_name=act,
        deep_supervision=False,
        res_block=False,
        trans_bias=True,
    )
    # DynUNet's decoder block at level l convolves with level l + 1's kernel; medtfx (and nnU-Net)
    # with level l's own. The same only when the two agree (isotropic plans); otherwise replace.
    filters = [int(f) for f in net["filters"]]
    for index, up in enumerate(model.upsamples):  # deepest decoder level first
        level = len(filters) - 2 - index
        if kernels[level] != kernels[level + 1]:
            up.conv_block = UnetBasicBlock(
                3, 2 * filters[level], filters[level], kernels[level], 1, norm_name=norm, act_name=act
            )
    return model


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def peak_rss_reset() -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def current_rss_mb() -> float:
    """VmRSS of this process in MB (nan when /proc is unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (ru_maxrss when /proc is unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Side:
    """State between requests: one training setup per precision, one inference setup per key."""

    def __init__(self) -> None:
        self.train: dict = {}
        self.infer: dict = {}

    def network(self, req: dict) -> dict:
        return {"params": count_params(build_dynunet(req["net"]))}

    def train_setup(self, req: dict) -> dict:
        torch.manual_seed(0)
        model = build_dynunet(req["net"])
        model.train()
        rng = np.random.default_rng(0)
        batch, patch = int(req["batch"]), [int(p) for p in req["patch"]]
        classes = int(req["net"]["num_classes"])
        image = torch.from_numpy(rng.standard_normal((batch, 1, *patch), dtype=np.float32))
        label = torch.from_numpy(rng.integers(0, classes, (batch, 1, *patch)).astype(np.int64))
        # medtfx's loss: batch soft Dice over the foreground classes + cross-entropy over all.
        loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        # Adam as Keras' (epsilon 1e-7).
        optimizer = torch.optim.Adam(model.parameters(), lr=float(req.get("lr", 3e-3)), eps=1e-7)
        self.train[req["precision"]] = (model, loss, optimizer, image, label)
        return {"params": count_params(model)}

    def train_steps(self, req: dict) -> dict:
        precision = req["precision"]
        model, loss_fn, optimizer, image, label = self.train[precision]
        seconds = []
        for _ in range(int(req["steps"])):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with _autocast(precision):
                loss = loss_fn(model(image), label)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds, "loss": float(loss.detach())}

    def infer_setup(self, req: dict) -> dict:
        torch.manual_seed(0)
        model = build_dynunet(req["net"]).eval()
        shape = [int(s) for s in req["shape"]]
        rng = np.random.default_rng(1)
        volume = torch.from_numpy(rng.standard_normal((1, 1, *shape), dtype=np.float32))
        self.infer[req["key"]] = (model, volume, req)
        return {"params": count_params(model)}

    def infer_run(self, req: dict) -> dict:
        model, volume, setup = self.infer[req["key"]]
        if req.get("warmup_shape"):  # a small volume of the same network and windows
            volume = torch.zeros((1, 1, *[int(s) for s in req["warmup_shape"]]))
        precision = setup["precision"]
        flips = [[]]
        for axis in sorted(int(a) for a in setup.get("mirror_axes", [])):
            flips += [f + [2 + axis] for f in flips]  # (B, C, X, Y, Z): spatial axes start at 2

        def predictor(window: torch.Tensor) -> torch.Tensor:
            # medtfx's test-time mirroring: mean softmax over every flip of each window.
            total = None
            for dims in flips:
                x = torch.flip(window, dims) if dims else window
                with _autocast(precision):
                    probs = torch.softmax(model(x).float(), dim=1)
                probs = torch.flip(probs, dims) if dims else probs
                total = probs if total is None else total + probs
            return total / len(flips)

        rss_before = current_rss_mb()
        peak_rss_reset()
        start = time.perf_counter()
        with torch.inference_mode():
            probs = sliding_window_inference(
                volume,
                roi_size=[int(p) for p in setup["patch"]],
                sw_batch_size=int(setup.get("sw_batch_size", 1)),
                predictor=predictor,
                overlap=float(setup["overlap"]),
                mode="gaussian",
                sigma_scale=0.125,
            )
            mask = torch.argmax(probs, dim=1).to(torch.uint8)
        seconds = time.perf_counter() - start
        digest = hashlib.sha1(mask.numpy().tobytes()).hexdigest()[:12]
        return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before, "mask_sha": digest}

    def matmul(self, req: dict) -> dict:
        n = int(req["n"])
        dtype = torch.bfloat16 if req["dtype"] == "bfloat16" else torch.float32
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(int(req.get("repeats", 3))):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        return {"gflops": 2.0 * n**3 / best / 1e9}


def main() -> int:
    side = Side()
    ops = {
        "network": side.network,
        "train_setup": side.train_setup,
        "train": side.train_steps,
        "infer_setup": side.infer_setup,
        "infer": side.infer_run,
        "matmul": side.matmul,
    }
    import monai

    hello = {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            reply = ops[req["op"]](req)
        except Exception as exc:  # one line back to the driver, the traceback on stderr
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
