"""PNG figures of a run's ``metrics.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..run_folder import read_metrics

PANELS = [  # (file stem, title, [(split, key, label)])
    ("reconstruction", "reconstruction term (nats/example)", [("train", "rec", "train"), ("valid", "rec", "valid")]),
    ("kl", "KL (nats/example)", [("train", "kl", "train"), ("valid", "kl", "valid")]),
    ("kl_weight", "KL weight", [("train", "kl_weight", "beta")]),
    ("valid_nll", "validation NLL bound: -ELBO (nats/example)", [("valid", "elbo", "-ELBO")]),
    ("latent_use", "latent use on validation", [("valid", "au", "active units"), ("valid", "mi", "MI (nats)")]),
]


def plot_run(run: Path, out: Optional[Path] = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    out = out or run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, title, series in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for split, key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
            if key == "elbo":
                points = [(s, -v) for s, v in points]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label, marker="." if split == "valid" else None)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
