"""ImageNet sanity checks for a rebuilt image backbone, with Python onnxruntime.

Usage: python check_imagenet.py MODEL.onnx KIND IMAGE_DIR [IMAGE_DIR...]
KIND is efficientnet-lite0 (has logits: class checks) or mobilenetv2 (features only:
neighbour checks). Exits non-zero, naming the failed image, when a check fails.

The expected classes come from ../shared/SOURCES.md: coffee.png -> 967 espresso,
chelsea.png -> a cat (281 tabby, 282 tiger cat, 285 Egyptian cat), rocket.jpg ->
657 missile or 744 projectile. The foolbox images carry their label in the name
(imagenet_NN_LABEL.jpg).
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

EXPECT = {"coffee.png": {967}, "chelsea.png": {281, 282, 285}, "rocket.jpg": {657, 744}}


def preprocess(path, kind):
    img = Image.open(path).convert("RGB")
    if kind == "efficientnet-lite0":
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        x = (np.asarray(img, np.float32) - 127.0) / 128.0
    else:
        img = img.resize((224, 224), Image.BILINEAR)
        x = (np.asarray(img, np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return x.transpose(2, 0, 1).astype(np.float32)


def main(model, kind, dirs):
    files = sorted(os.path.join(d, f) for d in dirs for f in os.listdir(d))
    files = [f for f in files if os.path.basename(f) in EXPECT or os.path.basename(f).startswith("imagenet_")]
    if not files:
        sys.exit("no sanity images found")
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess(f, kind) for f in files])
    outs = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": batch}))}
    feats = outs["features"]
    if not np.all(np.isfinite(feats)):
        sys.exit("non-finite features")
    failures = []
    if kind == "efficientnet-lite0":
        logits = outs["logits"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top1 = p.argmax(1)
        hits = 0
        for f, t, pr in zip(files, top1, p):
            name = os.path.basename(f)
            want = EXPECT.get(name) or {int(name.rsplit("_", 1)[1].split(".")[0])}
            ok = int(t) in want
            hits += ok and name.startswith("imagenet_")
            print(f"{name}: top-1 {t} (p={pr[t]:.3f}) expected {sorted(want)} {'ok' if ok else 'MISS'}")
            if name in EXPECT and not ok:
                failures.append(name)
        n = sum(os.path.basename(f).startswith("imagenet_") for f in files)
        print(f"foolbox ImageNet top-1: {hits}/{n}")
        # A model with wrong padding or normalisation drops far below this.
        if n and hits < 0.7 * n:
            failures.append(f"foolbox top-1 {hits}/{n} < 70%")
    else:
        # No classifier to read classes from: the two images of one class (609 jeep)
        # must be each other's nearest neighbour among all sanity images.
        names = [os.path.basename(f) for f in files]
        z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sim = z @ z.T
        np.fill_diagonal(sim, -np.inf)
        for a, b in [("imagenet_06_609.jpg", "imagenet_07_609.jpg")]:
            if a in names and b in names:
                i, j = names.index(a), names.index(b)
                print(f"{a}: nearest {names[int(sim[i].argmax())]}; {b}: nearest {names[int(sim[j].argmax())]}")
                if sim[i].argmax() != j or sim[j].argmax() != i:
                    failures.append(f"{a}/{b} are not mutual nearest neighbours")
    if failures:
        sys.exit("ImageNet check failed: " + "; ".join(failures))
    print("ImageNet checks passed")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
