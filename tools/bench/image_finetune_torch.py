"""PyTorch side of the image fine-tuning benchmark (`cargo xtask bench`).

Reads the workload written by `image-finetune-bench prepare` (preprocessed images as
raw float32, labels, the batches of every step, hyperparameters, the weights file),
builds the same network with plain torch modules (MobileNetV2 or EfficientNet-Lite0,
as tools/convert/convert.py lays them out), loads the same PyTorch weights, and
fine-tunes it the same way as tl-finetune: BatchNorm statistics frozen (eval mode),
dropout before a fresh linear classifier, cross-entropy, AdamW with weight decay except
on biases and BatchNorm, linear warm-up then decay, gradient clipping. Prints one JSON
object: images/s, forward/backward/optimizer seconds, test accuracy per epoch.

Run with OMP_WAIT_POLICY=PASSIVE and fused AdamW: PyTorch's best CPU figure here.
"""

import argparse
import json
import os
import resource
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class SamePad(nn.Module):
    """TensorFlow "SAME" padding: the odd extra pixel goes after (right, bottom)."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((-(-h // self.s) - 1) * self.s + self.k - h, 0)
        pw = max((-(-w // self.s) - 1) * self.s + self.k - w, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv_bn(sd, conv, bn, eps, stride, groups=1, same=False, act=True):
    w = torch.tensor(sd[conv])
    cout, cin_g, k, _ = w.shape
    c = nn.Conv2d(cin_g * groups, cout, k, stride, 0 if same else k // 2, groups=groups, bias=False)
    b = nn.BatchNorm2d(cout, eps=eps)
    with torch.no_grad():
        c.weight.copy_(w)
        b.weight.copy_(torch.tensor(sd[bn + ".weight"]))
        b.bias.copy_(torch.tensor(sd[bn + ".bias"]))
        b.running_mean.copy_(torch.tensor(sd[bn + ".running_mean"]))
        b.running_var.copy_(torch.tensor(sd[bn + ".running_var"]))
    layers = ([SamePad(k, stride)] if same else []) + [c, b] + ([nn.ReLU6()] if act else [])
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, units, residual):
        super().__init__()
        self.body, self.residual = nn.Sequential(*units), residual

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def mobilenetv2(sd):
    eps = 1e-5
    blocks = [Block([conv_bn(sd, "features.0.0.weight", "features.0.1", eps, 2)], False)]
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    inp, i = 32, 1
    for t, c, n, s in setting:
        for r in range(n):
            stride = s if r == 0 else 1
            p = f"features.{i}.conv."
            if t == 1:
                units = [conv_bn(sd, p + "0.weight", p + "1", eps, stride, groups=inp), conv_bn(sd, p + "3.weight", p + "4", eps, 1, act=False)]
            else:
                h = inp * t
                units = [
                    conv_bn(sd, p + "0.weight", p + "1", eps, 1),
                    conv_bn(sd, p + "3.weight", p + "4", eps, stride, groups=h),
                    conv_bn(sd, p + "6.weight", p + "7", eps, 1, act=False),
                ]
            blocks.append(Block(units, stride == 1 and inp == c))
            inp, i = c, i + 1
    blocks.append(Block([conv_bn(sd, f"features.{i}.0.weight", f"features.{i}.1", eps, 1)], False))
    return nn.Sequential(*blocks), 1280


def efficientnet_lite0(sd):
    eps = 1e-3
    blocks = [Block([conv_bn(sd, "_conv_stem.weight", "_bn0", eps, 2, same=True)], False)]
    stages = [(1, 1, 1), (6, 2, 2), (6, 2, 2), (6, 2, 3), (6, 1, 3), (6, 2, 4), (6, 1, 1)]
    x_ch, b = sd["_conv_stem.weight"].shape[0], 0
    for expand, stride, repeats in stages:
        for r in range(repeats):
            p = f"_blocks.{b}."
            s = stride if r == 0 else 1
            hidden = sd[p + "_depthwise_conv.weight"].shape[0]
            out = sd[p + "_project_conv.weight"].shape[0]
            units = []
            if expand != 1:
                units.append(conv_bn(sd, p + "_expand_conv.weight", p + "_bn0", eps, 1, same=True))
            units.append(conv_bn(sd, p + "_depthwise_conv.weight", p + "_bn1", eps, s, groups=hidden, same=True))
            units.append(conv_bn(sd, p + "_project_conv.weight", p + "_bn2", eps, 1, same=True, act=False))
            blocks.append(Block(units, s == 1 and x_ch == out))
            x_ch, b = out, b + 1
    head = sd["_conv_head.weight"].shape[0]
    blocks.append(Block([conv_bn(sd, "_conv_head.weight", "_bn1", eps, 1, same=True)], False))
    return nn.Sequential(*blocks), head


class Net(nn.Module):
    def __init__(self, body, features, classes, dropout, head_weight, head_bias):
        super().__init__()
        self.body, self.drop = body, nn.Dropout(dropout)
        self.head = nn.Linear(features, classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head_weight).reshape(classes, features))
            self.head.bias.copy_(torch.tensor(head_bias))

    def forward(self, x):
        return self.head(self.drop(self.body(x).mean((2, 3))))


def frozen_bn(model):
    """Training mode with BatchNorm on its pretrained statistics (tl-finetune's default)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = json.load(open(os.path.join(args.dir, "workload.json")))
    p, r, classes = w["params"], w["resolution"], w["classes"]
    sd = {k: v.float().numpy() for k, v in torch.load(w["weights"], map_location="cpu", weights_only=True).items() if v.is_floating_point()}
    body, features = (mobilenetv2 if w["model"] == "mobilenetv2" else efficientnet_lite0)(sd)
    model = Net(body, features, classes, p["dropout"], w["head_weight"], w["head_bias"])
    x_train = torch.from_numpy(np.fromfile(os.path.join(args.dir, "train.f32"), dtype="<f4").reshape(-1, 3, r, r))
    x_test = torch.from_numpy(np.fromfile(os.path.join(args.dir, "test.f32"), dtype="<f4").reshape(-1, 3, r, r))
    y_train, y_test = torch.tensor(w["train_labels"]), w["test_labels"]
    no_decay = {n for n, q in model.named_parameters() if q.ndim == 1}
    groups = [
        {"params": [q for n, q in model.named_parameters() if n not in no_decay], "weight_decay": p["weight_decay"]},
        {"params": [q for n, q in model.named_parameters() if n in no_decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=p["learning_rate"], eps=1e-8, fused=True)
    total = sum(len(e) for e in w["batches"])
    warmup = w["warmup_steps"]

    def lr_at(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s + 1))
    out = {"epochs": []}
    for epoch, batches in enumerate(w["batches"], 1):
        frozen_bn(model)
        fwd = bwd = opt_s = loss_sum = 0.0
        t0 = time.perf_counter()
        for b in batches:
            x, y = x_train[b], y_train[b]
            t = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if p["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            fwd, bwd, opt_s = fwd + t1 - t, bwd + t2 - t1, opt_s + t3 - t2
            loss_sum += loss.item() * len(b)
        secs = time.perf_counter() - t0
        n = sum(len(b) for b in batches)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x_test[k : k + 64]).argmax(-1) for k in range(0, len(x_test), 64)]).tolist()
        out["epochs"].append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "seconds": secs,
                "images_per_second": n / secs,
                "forward_seconds": fwd,
                "backward_seconds": bwd,
                "optimizer_seconds": opt_s,
                "steps": len(batches),
                "test_accuracy": sum(int(a == b) for a, b in zip(pred, y_test)) / len(y_test),
            }
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
