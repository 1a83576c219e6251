"""CPU benchmark of the multi-head latent Mamba-2 block against causal self-attention.

    python benchmarks/ssd_block.py            # everything; writes
                                              # benchmarks/results/ssd_block.{md,png}
    python benchmarks/ssd_block.py --quick    # a smoke run (small sizes), prints the tables only

Every measured point runs in a fresh subprocess: time is the median (and the minimum) over
repeated forward+backward passes after a warm-up pass; peak memory is the process's peak RSS
during that first (warm-up) forward+backward above its RSS just before it (``harness.peak_rss_mb``:
activations saved for backward, temporaries and gradients as far as malloc got them from the OS).

Models (width 64, float32, training mode, gradients w.r.t. the input and all parameters):
- latent: ``MultiHeadLatentMamba2(n_heads=4, d_head=16, d_state=128, expand=2)``, i.e. four
  Mamba-2 blocks of d_model 16 (d_inner 32, one SSD head of headdim 32, ngroups 1), PyTorch path;
- attention: QKV projection + ``F.scaled_dot_product_attention(is_causal=True)`` (4 heads of 16)
  + output projection, no bias.

FLOPs (``latent_flops``): the chunked SSD algorithm's matmuls per chunk of length q (after the
sequence is cut into ``c = ceil(l / chunk_size)`` equal chunks, ``q = ceil(l / c)``), with h SSD
heads, g B/C groups, headdim p, state n:
    C B^T: 2 q^2 n per group;  (L o C B^T) x: 2 q^2 p per head;  chunk states: 2 q p n per head;
    inter-chunk step: 2 p n per head;  state -> output: 2 q p n per head,
plus in_proj, out_proj (2 * fan_in * fan_out per token and head) and the conv (2 * d_conv per
channel and token). Attention: projections 8 l d^2 and the causal half of QK^T and PV,
2 * 2 * d * l(l+1)/2. Forward + backward is counted as 3x forward. Elementwise work is not counted.
"""

import argparse
import json
import math
import os
import statistics
import time

import harness  # benchmarks/harness.py

TOKENS = 16384  # tokens per step: batch = TOKENS // length
LENGTHS = [64, 256, 1024, 4096, 16384]
CHUNKS = [16, 32, 64, 128, 256]
SWEEP_LENGTHS = [1024, 16384]
DEFAULT_CHUNK = 64
CONFIG = {"n_heads": 4, "d_head": 16, "d_state": 128, "d_conv": 4, "expand": 2}
# glibc malloc settings that keep freed memory for reuse instead of returning it to the OS.
TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(1 << 28),
}
HERE = os.path.dirname(os.path.abspath(__file__))


def latent_flops(
    batch, length, chunk_size, n_heads, d_head, d_state, d_conv, expand, headdim=None, ngroups=1
):
    d_inner = expand * d_head
    p = d_inner if headdim is None else headdim
    nh = d_inner // p
    h, g, n = n_heads * nh, n_heads * ngroups, d_state
    chunks = math.ceil(length / chunk_size)
    q = math.ceil(length / chunks)
    scan = chunks * (
        g * 2 * q * q * n + h * (2 * q * q * p + 2 * q * p * n + 2 * p * n + 2 * q * p * n)
    )
    d_in_proj = 2 * d_inner + 2 * ngroups * n + nh
    conv_dim = n_heads * (d_inner + 2 * ngroups * n)
    per_token = (
        n_heads * 2 * d_head * d_in_proj + n_heads * 2 * d_inner * d_head + 2 * d_conv * conv_dim
    )
    return 3 * batch * (scan + length * per_token)


def attention_flops(batch, length, d_model):
    forward = 8 * length * d_model * d_model + 2 * 2 * d_model * length * (length + 1) // 2
    return 3 * batch * forward


# ---- one point, in its own process -------------------------------------------------------------


def build(kind, chunk_size, config):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from recbole_hydra.layers import kernels
    from recbole_hydra.layers.mamba2 import MultiHeadLatentMamba2

    if kind == "latent":
        kernels.set_enabled(False)  # the PyTorch ops are measured (this process runs one point)
        return MultiHeadLatentMamba2(**config, chunk_size=chunk_size)

    class CausalSelfAttention(nn.Module):
        def __init__(self, d_model=64, n_heads=4):
            super().__init__()
            self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
            self.out = nn.Linear(d_model, d_model, bias=False)
            self.n_heads = n_heads

        def forward(self, x):
            b, l, d = x.shape
            q, k, v = (
                self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(b, l, d))

    torch.manual_seed(0)
    return CausalSelfAttention()


def run_point(point):
    import torch

    kind, length, chunk_size = (
        point["kind"],
        point["length"],
        point.get("chunk_size", DEFAULT_CHUNK),
    )
    batch = max(1, TOKENS // length)
    d_model = CONFIG["n_heads"] * CONFIG["d_head"]
    config = dict(CONFIG, d_state=point.get("d_state", CONFIG["d_state"]))
    torch.manual_seed(0)
    model = build(kind, chunk_size, config)

    def fwd_bwd(u):
        model(u).square().mean().backward()

    u = torch.randn(batch, length, d_model, requires_grad=True)
    harness.reset_peak_rss()
    before_mb = harness.rss_mb()
    t0 = time.perf_counter()
    fwd_bwd(u)  # warm-up, and the peak memory
    first = time.perf_counter() - t0
    peak_mib = harness.peak_rss_mb() - before_mb
    times, cpu_times = [], []
    budget = point.get("budget_s", 2.0)
    while len(times) < 3 or (sum(times) < budget and len(times) < 10):
        model.zero_grad(set_to_none=True)
        u.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        fwd_bwd(u)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if first > 4 * budget:  # very slow point: three repetitions are enough
            break
    flops = (
        latent_flops(batch, length, chunk_size, **config)
        if kind == "latent"
        else attention_flops(batch, length, d_model)
    )
    seconds = statistics.median(times)
    return dict(
        point,
        batch=batch,
        tokens=batch * length,
        seconds=seconds,
        min_seconds=min(times),
        reps=len(times),
        cpu_seconds=min(cpu_times),
        peak_mib=peak_mib,
        gflops=flops / seconds / 1e9,
    )


def measure(point, env_extra=None, timeout=300):
    done = harness.run_fresh(
        [os.path.abspath(__file__), "--point", json.dumps(point)], env=env_extra, timeout=timeout
    )
    if done.timed_out:
        return dict(point, error=f"timeout after {timeout} s")
    if not done.ok:
        return dict(point, error=done.error())
    print(json.dumps(done.result), flush=True)
    return done.result


# ---- the report --------------------------------------------------------------------------------


def hardware():
    """The machine, its load now, and what first-touching fresh memory costs on it."""
    import torch

    # cost of first-touching fresh memory (page faults) vs writing memory already mapped
    buf = torch.empty(64 << 18)  # 256 MiB, not yet touched
    t0 = time.perf_counter()
    buf.fill_(1.0)
    t1 = time.perf_counter()
    buf.fill_(2.0)
    t2 = time.perf_counter()
    del buf
    return {
        "machine": harness.machine(threads=torch.get_num_threads()),
        "load": os.getloadavg(),
        "first_touch_ms_per_mib": (t1 - t0) / 256 * 1e3,
        "rewrite_ms_per_mib": (t2 - t1) / 256 * 1e3,
    }


def _ok(r):
    return r is not None and "error" not in r


def _cell(r, key, fmt):
    """A table cell: ``fmt`` of ``r[key]`` (or of ``key(r)`` when key is a function)."""
    if r is None:
        return "skipped"
    if "error" in r:
        return "failed: " + r["error"][:60]
    return fmt.format(key(r) if callable(key) else r[key])


def _ms(r):
    return r["seconds"] * 1e3


def _ms_min(r):
    return f"{r['seconds'] * 1e3:.0f} ({r['min_seconds'] * 1e3:.0f})"


def _cpu_ms(r):
    return r["cpu_seconds"] * 1e3


def _us_per_token(r):
    return r["seconds"] / r["tokens"] * 1e6


def _kib_per_token(r):
    return r["peak_mib"] * 1024 / r["tokens"]


def report(results, hw_before, hw_after, command):
    series = {}
    for r in results:
        series.setdefault(r["series"], {})[(r["length"], r.get("chunk_size", DEFAULT_CHUNK))] = r
    lat = {k[0]: v for k, v in series.get("latent", {}).items()}
    att = {k[0]: v for k, v in series.get("attention", {}).items()}
    lat_t = {k[0]: v for k, v in series.get("latent_tuned", {}).items()}
    lat_s = {k[0]: v for k, v in series.get("latent_state32", {}).items()}
    sweep = dict(series.get("sweep", {}))
    for length in {k[0] for k in sweep}:  # the main series supplies the default chunk size
        if length in lat:
            sweep.setdefault((length, DEFAULT_CHUNK), lat[length])

    out = harness.header(
        "Multi-head latent Mamba-2 block vs causal self-attention on CPU",
        command,
        hw_before["machine"],
        f"Date: {time.strftime('%Y-%m-%d')}; load average (1 min) before / after the run: "
        f"{hw_before['load'][0]:.2f} / {hw_after['load'][0]:.2f}",
    )
    out += [
        (
            "Latent block: `MultiHeadLatentMamba2(n_heads=4, d_head=16, d_state=128, expand=2, "
            f"chunk_size={DEFAULT_CHUNK})`, "
            "width 64: four Mamba-2 blocks of d_model 16 "
            "(d_inner 32, one SSD head of headdim 32, ngroups 1), "
            "PyTorch path, float32. "
            "Attention: QKV projection + `F.scaled_dot_product_attention(is_causal=True)` "
            "(4 heads x 16) + output projection, no bias. "
            "Forward + backward (loss: mean of squares; gradients "
            f"for the input and all parameters), batch = {TOKENS} tokens / length. "
            "Time: median over repetitions; "
            "peak memory: peak RSS of the process during its first forward + backward "
            "above its RSS before it "
            "(saved activations, temporaries and gradients); each point in a fresh process. "
            "GFLOP/s against the FLOP counts in the script's docstring "
            "(forward + backward = 3 x forward matmul "
            "FLOPs; attention counted for the causal half only)."
        ),
        "",
        "## Sequence length",
        "",
        (
            "ms: median (min) wall time of one forward + backward; "
            "CPU ms: least process CPU time (both threads) of one, less sensitive to other jobs; "
            "us/token and GFLOP/s from the median; the last "
            "columns divide attention's time by the latent block's (median wall, CPU)."
        ),
        "",
        (
            "| length | batch | latent ms | latent CPU ms | latent us/token | latent peak MiB "
            "| latent KiB/token "
            "| latent GFLOP/s | attention ms | attention CPU ms | attention us/token "
            "| attention peak MiB "
            "| attention GFLOP/s | attention / latent (wall) | attention / latent (CPU) |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in sorted(set(lat) | set(att)):
        a, b = lat.get(length), att.get(length)
        ratio = f"{b['seconds'] / a['seconds']:.2f}x" if _ok(a) and _ok(b) else ""
        cpu_ratio = f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x" if _ok(a) and _ok(b) else ""
        out.append(
            f"| {length} | {max(1, TOKENS // length)} | {_cell(a, _ms_min, '{}')} "
            f"| {_cell(a, _cpu_ms, '{:.0f}')} "
            f"| {_cell(a, _us_per_token, '{:.2f}')} | {_cell(a, 'peak_mib', '{:.0f}')} "
            f"| {_cell(a, _kib_per_token, '{:.2f}')} "
            f"| {_cell(a, 'gflops', '{:.1f}')} | {_cell(b, _ms_min, '{}')} "
            f"| {_cell(b, _cpu_ms, '{:.0f}')} "
            f"| {_cell(b, _us_per_token, '{:.2f}')} | {_cell(b, 'peak_mib', '{:.0f}')} "
            f"| {_cell(b, 'gflops', '{:.1f}')} | {ratio} | {cpu_ratio} |"
        )
    lat_fpt = latent_flops(1, 4096, DEFAULT_CHUNK, **CONFIG) / 4096
    att_fpt = attention_flops(1, 4096, CONFIG["n_heads"] * CONFIG["d_head"]) / 4096
    out += [
        "",
        (
            f"FLOPs per token (forward + backward, the docstring's counts): latent block "
            f"{lat_fpt / 1e3:.0f}k at any length (d_state 128), "
            f"attention {att_fpt / 1e3:.0f}k at length "
            f"4096 ({att_fpt / lat_fpt:.1f}x the latent block's)."
        ),
    ]
    if lat_t:
        env = " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        out += [
            "",
            "## Same, with glibc malloc told to keep freed memory",
            "",
            (
                f"Environment of the latent runs: `{env}`; "
                "the attention columns are the default-malloc run "
                "above. Writing fresh memory (first touch, 256 MiB) took "
                f"{hw_before['first_touch_ms_per_mib']:.2f} ms per MiB, rewriting it "
                f"{hw_before['rewrite_ms_per_mib']:.2f} ms per MiB "
                "(measured at the start of the run)."
            ),
            "",
            (
                "| length | latent ms | latent CPU ms | latent us/token | latent GFLOP/s "
                "| attention ms | attention CPU ms "
                "| attention / latent (wall) | attention / latent (CPU) |"
            ),
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for length in sorted(lat_t):
            a, b = lat_t.get(length), att.get(length)
            ratio = f"{b['seconds'] / a['seconds']:.2f}x" if _ok(a) and _ok(b) else ""
            cpu_ratio = f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x" if _ok(a) and _ok(b) else ""
            out.append(
                f"| {length} | {_cell(a, _ms_min, '{}')} | {_cell(a, _cpu_ms, '{:.0f}')} "
                f"| {_cell(a, _us_per_token, '{:.2f}')} "
                f"| {_cell(a, 'gflops', '{:.1f}')} | {_cell(b, _ms_min, '{}')} "
                f"| {_cell(b, _cpu_ms, '{:.0f}')} "
                f"| {ratio} | {cpu_ratio} |"
            )
    if lat_s:
        out += [
            "",
            "## Smaller state: d_state = 32 (default malloc)",
            "",
            "The same block with `d_state=32`.",
            "",
            (
                "| length | latent (d_state 32) ms | CPU ms | us/token | peak MiB | GFLOP/s "
                "| attention / this (wall) | attention / this (CPU) |"
            ),
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for length in sorted(lat_s):
            a, b = lat_s[length], att.get(length)
            ratio = f"{b['seconds'] / a['seconds']:.2f}x" if _ok(a) and _ok(b) else ""
            cpu_ratio = f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x" if _ok(a) and _ok(b) else ""
            out.append(
                f"| {length} | {_cell(a, _ms_min, '{}')} | {_cell(a, _cpu_ms, '{:.0f}')} "
                f"| {_cell(a, _us_per_token, '{:.2f}')} | {_cell(a, 'peak_mib', '{:.0f}')} "
                f"| {_cell(a, 'gflops', '{:.1f}')} | {ratio} | {cpu_ratio} |"
            )
    if sweep:
        lengths = sorted({k[0] for k in sweep})
        chunks = sorted({k[1] for k in sweep})
        out += [
            "",
            "## Chunk size (latent block, default malloc)",
            "",
            "median ms per forward + backward (least CPU ms, peak MiB, GFLOP/s).",
            "",
            "| chunk_size | " + " | ".join(f"length {l}" for l in lengths) + " |",
            "|---:|" + "---:|" * len(lengths),
        ]
        for q in chunks:
            cells = []
            for l in lengths:
                r = sweep.get((l, q))
                cells.append(
                    ""
                    if r is None
                    else _cell(
                        r,
                        lambda r: (
                            f"{_ms(r):.0f} ({_cpu_ms(r):.0f}, "
                            f"{r['peak_mib']:.0f}, {r['gflops']:.1f})"
                        ),
                        "{}",
                    )
                )
            out.append(f"| {q} | " + " | ".join(cells) + " |")
    return out, {"lat": lat, "att": att, "lat_t": lat_t, "lat_s": lat_s, "sweep": sweep}


def plot(path, lat, att, lat_t, lat_s, sweep):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for data, label, style in (
        (lat, "latent Mamba-2 block (d_state 128)", "o-"),
        (lat_t, "same, malloc keeps freed memory", "o--"),
        (lat_s, "latent block, d_state 32", "^-"),
        (att, "causal self-attention", "s-"),
    ):
        points = sorted((l, r) for l, r in data.items() if _ok(r))
        if not points:
            continue
        ls = [l for l, _ in points]
        axes[0].plot(ls, [_us_per_token(r) for _, r in points], style, label=label)
        if data is not lat_t and data is not lat_s:
            axes[1].plot(ls, [_kib_per_token(r) for _, r in points], style, label=label)
    for ax, ylabel, title in (
        (axes[0], "us per token (fwd + bwd)", "time per token"),
        (axes[1], "KiB per token", "peak memory per token (fwd + bwd)"),
    ):
        harness.log_log(ax, f"sequence length (batch x length = {TOKENS})", ylabel, title, xbase=2)
    for length in sorted({k[0] for k in sweep}):
        points = sorted((q, r) for (l, q), r in sweep.items() if l == length and _ok(r))
        axes[2].plot(
            [q for q, _ in points],
            [_us_per_token(r) for _, r in points],
            "o-",
            label=f"length {length}",
        )
    harness.log_log(
        axes[2], "chunk_size", "us per token (fwd + bwd)", "latent block: chunk size", xbase=2
    )
    harness.save_png(fig, path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes only, print the tables, write nothing"
    )
    parser.add_argument(
        "--no-tuned", action="store_true", help="skip the runs with the tuned malloc settings"
    )
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="folder for ssd_block.{md,png}"
    )
    args = parser.parse_args()
    if args.point:
        harness.emit(run_point(json.loads(args.point)))
        return
    harness.pyplot()  # a missing matplotlib stops the command now, not after the timings

    lengths = [64, 256] if args.quick else LENGTHS
    sweep_lengths = [256] if args.quick else SWEEP_LENGTHS
    chunks = [32, 64] if args.quick else CHUNKS
    hw_before = hardware()
    results = []
    for length in lengths:
        for kind in ("latent", "attention"):
            results.append(
                measure(
                    {"series": kind, "kind": kind, "length": length, "chunk_size": DEFAULT_CHUNK}
                )
            )
    for length in sweep_lengths:
        for q in chunks:
            if q != DEFAULT_CHUNK or length not in lengths:
                results.append(
                    measure(
                        {"series": "sweep", "kind": "latent", "length": length, "chunk_size": q}
                    )
                )
    for length in [l for l in lengths if l >= 1024] or lengths[-1:]:
        results.append(
            measure(
                {
                    "series": "latent_state32",
                    "kind": "latent",
                    "length": length,
                    "chunk_size": DEFAULT_CHUNK,
                    "d_state": 32,
                }
            )
        )
    if not args.no_tuned:  # attention allocates little: compared with its default-malloc times
        for length in lengths:
            results.append(
                measure(
                    {
                        "series": "latent_tuned",
                        "kind": "latent",
                        "length": length,
                        "chunk_size": DEFAULT_CHUNK,
                    },
                    env_extra=TUNED_MALLOC,
                )
            )
    hw_after = hardware()
    lines, data = report(results, hw_before, hw_after, harness.command())
    print("\n".join(lines))
    if args.quick:
        return
    harness.write_report(os.path.join(args.out, "ssd_block.md"), lines)
    plot(
        os.path.join(args.out, "ssd_block.png"),
        data["lat"],
        data["att"],
        data["lat_t"],
        data["lat_s"],
        data["sweep"],
    )


if __name__ == "__main__":
    main()
