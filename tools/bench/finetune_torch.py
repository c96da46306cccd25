"""PyTorch + transformers side of the fine-tuning benchmark (`cargo xtask bench`).

Reads the workload written by `bench-inputs finetune` (token ids, labels, the batches of
every step, hyperparameters), fine-tunes the same fp32 weights the same way as
tl-finetune (mean pooling + linear, cross-entropy, AdamW with weight decay except on
biases and LayerNorm, linear warm-up then decay, dropout, gradient clipping) and prints
one JSON object: sentences/s, forward/backward/optimizer seconds, accuracy per epoch.

Run with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads on shared cores cut PyTorch's
throughput about 5x here) and fused AdamW: PyTorch's best CPU figure on this machine.
"""

import argparse
import json
import resource
import time

import torch
from transformers import BertModel


def pad(batch_ids):
    longest = max(len(s) for s in batch_ids)
    ids = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    for i, s in enumerate(batch_ids):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


class Classifier(torch.nn.Module):
    def __init__(self, model_dir, classes, dropout, head_weight, head_bias):
        super().__init__()
        self.bert = BertModel.from_pretrained(
            model_dir,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            add_pooling_layer=False,
            attn_implementation="eager",
        )
        hidden = self.bert.config.hidden_size
        self.head = torch.nn.Linear(hidden, classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head_weight).reshape(classes, hidden))
            self.head.bias.copy_(torch.tensor(head_bias))

    def forward(self, ids, mask):
        states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1)
        return self.head(pooled)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="run fewer epochs than the file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = json.load(open(args.workload))
    p = w["params"]
    model = Classifier(w["model_dir"], w["classes"], p["dropout"], w["head_weight"], w["head_bias"])
    no_decay = [n for n, _ in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [
        {"params": [q for n, q in model.named_parameters() if n not in no_decay], "weight_decay": p["weight_decay"]},
        {"params": [q for n, q in model.named_parameters() if n in no_decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=p["learning_rate"], eps=1e-8, fused=True)
    epochs = w["batches"][: args.epochs] if args.epochs else w["batches"]
    total = sum(len(e) for e in w["batches"])
    warmup = w["warmup_steps"]

    def lr_at(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s + 1))
    train_ids, labels = w["train_ids"], w["train_labels"]
    out = {"epochs": []}
    step = 0
    for epoch, batches in enumerate(epochs, 1):
        model.train()
        fwd = bwd = opt_s = 0.0
        loss_sum = 0.0
        t0 = time.perf_counter()
        for b in batches:
            ids, mask = pad([train_ids[i] for i in b])
            y = torch.tensor([labels[i] for i in b])
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(ids, mask), y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            fwd, bwd, opt_s = fwd + t1 - t, bwd + t2 - t1, opt_s + t3 - t2
            loss_sum += loss.item() * len(b)
            step += 1
        secs = time.perf_counter() - t0
        n = sum(len(b) for b in batches)
        model.eval()
        correct = 0
        test_ids, test_labels = w["test_ids"], w["test_labels"]
        order = sorted(range(len(test_ids)), key=lambda i: len(test_ids[i]))
        with torch.no_grad():
            for k in range(0, len(order), 64):
                chunk = order[k : k + 64]
                ids, mask = pad([test_ids[i] for i in chunk])
                pred = model(ids, mask).argmax(-1).tolist()
                correct += sum(int(pr == test_labels[i]) for pr, i in zip(pred, chunk))
        out["epochs"].append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "seconds": secs,
                "sentences_per_second": n / secs,
                "forward_seconds": fwd,
                "backward_seconds": bwd,
                "optimizer_seconds": opt_s,
                "steps": len(batches),
                "test_accuracy": correct / len(test_ids),
            }
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
