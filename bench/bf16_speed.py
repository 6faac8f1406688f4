"""bfloat16 autocast vs float32 on this CPU: one SmolLM2-135M-shaped decoder layer (hidden 576, MLP
1536, 9 heads), forward + backward on a batch of 8 x 256 tokens, and the forward alone, each timed
over several repeats. Says whether ``precision: auto`` should pick bf16 here (``native_bf16``: the
CPU's avx512_bf16 / amx_bf16 flags) and what bf16 costs where it is emulated.

    python bench/bf16_speed.py [--quick]

Writes bench/results/bf16_speed.json and .md (the CPU model and flags in the notes).
"""

from __future__ import annotations

import time

from common import parser, setup, write


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    setup()
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from r2f.config._base import native_bf16

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048)
    layer, rope = LlamaDecoderLayer(cfg, 0), LlamaRotaryEmbedding(cfg)
    batch, seq = (2, 128) if args.quick else (8, 256)
    x = torch.randn(batch, seq, 576, requires_grad=True)
    pos = torch.arange(seq).unsqueeze(0)
    emb = rope(x, pos)
    repeats = 2 if args.quick else args.repeats
    rows = []
    for mode in ("forward", "forward+backward"):
        times = {}
        for prec in ("fp32", "bf16"):
            def step(prec=prec, mode=mode):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    out = layer(x, position_embeddings=emb)
                    out = out[0] if isinstance(out, tuple) else out
                if mode != "forward":
                    out.float().sum().backward()
            step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                step()
            times[prec] = (time.perf_counter() - t0) / repeats
        rows.append({"mode": mode, "tokens": batch * seq, "fp32_ms": round(times["fp32"] * 1000, 1),
                     "bf16_ms": round(times["bf16"] * 1000, 1), "bf16_vs_fp32": round(times["bf16"] / times["fp32"], 2)})
        print(rows[-1], flush=True)
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in info.split()]
    notes = [f"CPU: {model}; flags {', '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}; "
             f"native_bf16 {native_bf16()} (precision: auto picks {'bf16' if native_bf16() else 'fp32'}); "
             f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads.",
             f"one SmolLM2-135M-shaped decoder layer, {batch} x {seq} tokens, mean of {repeats} repeats after a warm-up; "
             "bf16 = torch.autocast('cpu', bfloat16) with float32 weights (as training and scoring use it)."]
    write("bf16_speed", args, rows, ["mode", "tokens", "fp32_ms", "bf16_ms", "bf16_vs_fp32"], notes,
          {"native_bf16": native_bf16(), "cpu_model": model, "flags": flags},
          deps=["r2f/config/_base.py", "bench/bf16_speed.py"])


if __name__ == "__main__":
    main()
