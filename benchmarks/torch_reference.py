"""The PyTorch baseline of ``benchmarks/train_step.py``: the same network, timed the same way.

An independent PyTorch (CPU) model of the lab's size (docs/model.md: VGG-64 encoder/decoder with
skips, predictor/posterior/prior LSTMs, condition 7, BatchNorm head) and one training iteration
in one of two call patterns (docs/model.md):

* ``original``: the original's loop -- at every step t the encoder runs on x_{t-1} and on x_t
  (22 encoder calls for 2 + 10 frames), the decoder once per step;
* ``encode_once``: every frame is encoded once per iteration (12 encoder calls), same loss.

Teacher forced throughout (the lab's tfr = 1), loss MSE + KL (beta 1), Adam lr 0.002. Prints one
JSON line per (pattern, batch size) with the median seconds/iteration over ``--steps`` after one
warm-up, like ``train_step.py``. Needs ``torch`` (not a dependency of vp_jax)::

    pip install torch    # CPU wheel
    python benchmarks/torch_reference.py --batch 4 12 --steps 10
    python benchmarks/torch_reference.py --device cuda --batch 12 100        # on a GPU
    python benchmarks/torch_reference.py --device cuda --amp bf16 --batch 100  # bfloat16 autocast

On a GPU each timed iteration ends with ``torch.cuda.synchronize()`` and the record adds
``device_peak_mb`` (``torch.cuda.max_memory_allocated``). ``--amp bf16`` runs the forward pass
under ``torch.autocast(dtype=torch.bfloat16)`` (parameters, gradients and Adam stay float32), the
counterpart of vp_jax's ``model.dtype=bfloat16``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def build(torch, nn, widths=(64, 128, 256, 512), g_dim=128, z_dim=64, rnn=256, cond_dim=7):
    def vgg(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))

    w1, w2, w3, w4 = widths

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Sequential(vgg(3, w1), vgg(w1, w1))
            self.c2 = nn.Sequential(vgg(w1, w2), vgg(w2, w2))
            self.c3 = nn.Sequential(vgg(w2, w3), vgg(w3, w3), vgg(w3, w3))
            self.c4 = nn.Sequential(vgg(w3, w4), vgg(w4, w4), vgg(w4, w4))
            self.c5 = nn.Sequential(nn.Conv2d(w4, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            h1 = self.c1(x)
            h2 = self.c2(self.pool(h1))
            h3 = self.c3(self.pool(h2))
            h4 = self.c4(self.pool(h3))
            return self.c5(self.pool(h4)).view(-1, g_dim), [h1, h2, h3, h4]

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.upc1 = nn.Sequential(nn.ConvTranspose2d(g_dim, w4, 4, 1, 0), nn.BatchNorm2d(w4), nn.LeakyReLU(0.2))
            self.upc2 = nn.Sequential(vgg(2 * w4, w4), vgg(w4, w4), vgg(w4, w3))
            self.upc3 = nn.Sequential(vgg(2 * w3, w3), vgg(w3, w3), vgg(w3, w2))
            self.upc4 = nn.Sequential(vgg(2 * w2, w2), vgg(w2, w1))
            self.upc5 = nn.Sequential(vgg(2 * w1, w1), nn.ConvTranspose2d(w1, 3, 3, 1, 1), nn.Sigmoid())
            self.up = nn.UpsamplingNearest2d(scale_factor=2)

        def forward(self, g, skip):
            d = self.upc1(g.view(-1, g_dim, 1, 1))
            for layer, s in zip((self.upc2, self.upc3, self.upc4, self.upc5), reversed(skip)):
                d = layer(torch.cat([self.up(d), s], 1))
            return d

    class LSTM(nn.Module):
        def __init__(self, cin, cout, layers, gaussian, bn_head=False):
            super().__init__()
            self.embed = nn.Linear(cin, rnn)
            self.cells = nn.ModuleList([nn.LSTMCell(rnn, rnn) for _ in range(layers)])
            self.gaussian = gaussian
            if gaussian:
                self.mu, self.lv = nn.Linear(rnn, cout), nn.Linear(rnn, cout)
            else:
                self.out = nn.Sequential(nn.Linear(rnn, cout), nn.BatchNorm1d(cout) if bn_head else nn.Identity(), nn.Tanh())

        def init_hidden(self, b):
            z = torch.zeros(b, rnn, device=self.embed.weight.device)
            return [(z, z) for _ in self.cells]

        def forward(self, x, hidden):
            h = self.embed(x)
            new = []
            for cell, hc in zip(self.cells, hidden):
                hc = cell(h, hc)
                h = hc[0]
                new.append(hc)
            if self.gaussian:
                mu, lv = self.mu(h), self.lv(h)
                return (mu + torch.exp(0.5 * lv) * torch.randn_like(mu), mu, lv), new
            return self.out(h), new

    enc, dec = Encoder(), Decoder()
    pred = LSTM(g_dim + z_dim + cond_dim, g_dim, 2, False, bn_head=True)
    post = LSTM(g_dim, z_dim, 1, True)
    prior = LSTM(g_dim, z_dim, 1, True)
    return enc, dec, pred, post, prior


def iteration(torch, nets, opt, x, c, n_past, pattern, amp=None):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        loss = _loss(torch, nets, x, c, n_past, pattern)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return float(loss.detach())


def _loss(torch, nets, x, c, n_past, pattern):
    enc, dec, pred, post, prior = nets
    T, B = x.shape[0], x.shape[1]
    hp, hq, hr = pred.init_hidden(B), post.init_hidden(B), prior.init_hidden(B)
    mse = kld = 0.0
    if pattern == "encode_once":
        encoded = [enc(x[t]) for t in range(T)]
    skip = None
    for t in range(1, T):
        if pattern == "encode_once":
            h, s = encoded[t - 1]
            h_target = encoded[t][0]
        else:
            h, s = enc(x[t - 1])
            h_target = enc(x[t])[0]
        if t < n_past or skip is None:
            skip = s
        (z, mu, lv), hq = post(h_target, hq)
        (_, mu_p, lv_p), hr = prior(h, hr)
        g, hp = pred(torch.cat([h, z, c[t]], 1), hp)
        x_hat = dec(g, skip)
        mse = mse + torch.mean((x_hat.float() - x[t]) ** 2)
        kl = 0.5 * (lv_p - lv) + (torch.exp(lv) + (mu - mu_p) ** 2) / (2 * torch.exp(lv_p)) - 0.5
        kld = kld + kl.float().sum() / B
    return mse + kld


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[4, 12])
    p.add_argument("--pattern", nargs="+", default=["original", "encode_once"], choices=["original", "encode_once"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--n-past", type=int, default=2)
    p.add_argument("--n-future", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--amp", choices=["bf16"], help="bfloat16 autocast for the forward pass")
    args = p.parse_args(argv)
    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    T = args.n_past + args.n_future
    for pattern in args.pattern:
        for B in args.batch:
            nets = [net.to(device) for net in build(torch, nn)]
            params = [q for net in nets for q in net.parameters()]
            opt = torch.optim.Adam(params, lr=0.002, betas=(0.9, 0.999))
            rng = np.random.default_rng(0)
            x = torch.from_numpy(rng.random((T, B, 3, 64, 64), dtype=np.float32)).to(device)
            c = torch.from_numpy(rng.standard_normal((T, B, 7)).astype(np.float32)).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            load = os.getloadavg()[0]
            iteration(torch, nets, opt, x, c, args.n_past, pattern, args.amp)  # warm-up
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                loss = iteration(torch, nets, opt, x, c, args.n_past, pattern, args.amp)
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            record = {
                "framework": f"torch {torch.__version__}",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "amp": args.amp or "none",
                "pattern": pattern,
                "batch_size": B,
                "frames_per_sequence": T,
                "steps": args.steps,
                "median_s": round(med, 4),
                "min_s": round(min(times), 4),
                "max_s": round(max(times), 4),
                "sequences_per_s": round(B / med, 3),
                "parameters": sum(q.numel() for q in params),
                "threads": torch.get_num_threads(),
                "loss": loss,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "load": [round(load, 2), round(os.getloadavg()[0], 2)],
            }
            if device.type == "cuda":
                record["device_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            print(json.dumps(record), flush=True)
            del nets, params, opt, x, c


if __name__ == "__main__":
    main()
