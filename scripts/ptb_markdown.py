"""The Penn Treebank report's markdown (scripts/ptb_full_report.py): the
full table, the README's shorter one, the published figures, the showcase
output, and the README's blocks between their <!-- NAME --> markers."""

from __future__ import annotations

from pathlib import Path


def samples_label(ev: dict) -> str:
    """An evaluation's importance samples, and its precision where not fp32."""
    settings = ev["settings"]
    return f"{settings['iw_samples']}" + (f", {settings['precision']}" if settings.get("precision", "fp32") != "fp32" else "")


def cell(value, digits=2) -> str:
    if value is None:
        return "–"
    return f"{value:d}" if isinstance(value, int) else f"{value:.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| run | what | NLL | samples | PPL | ELBO | KL | MI | AU | BLEU | epochs | train time | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['run']} | {r['what']} | {r['status']} |" + " |" * 10)
            continue
        ev = r["eval"]
        samples = "exact" if "mi" not in ev else samples_label(ev)
        lines.append(f"| {r['run']} | {r['what']} | {cell(ev['nll'])} | {samples} | {cell(ev['ppl'], 1)} | "
                     f"{cell(ev['elbo'])} | {cell(ev['kl'])} | {cell(ev.get('mi'))} | {cell(ev.get('au'))} | "
                     f"{cell(ev.get('bleu'), 1)} | {r['epochs']} | {r['train_minutes']} min | "
                     f"{ev.get('device', '?')} |")
    return lines


def readme_table(rows: list[dict], best: tuple[str | None, str | None], labels: dict[str, str]) -> list[str]:
    """The README's shorter table, each row under its short label: the best LM and VAE in bold."""
    lines = ["| run | test NLL | PPL | KL | MI | AU | BLEU | training |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = labels[r["run"]]
        if r["status"] != "done":
            lines.append(f"| {label} | {r['status']} |" + " |" * 6)
            continue
        ev, lm = r["eval"], "mi" not in r["eval"]
        nll = f"**{ev['nll']:.2f}**" if r["run"] in best else f"{ev['nll']:.2f}"
        nll += " (exact)" if lm else f" (IW, {samples_label(ev)})"
        latent = ["–"] * 4 if lm else [f"{ev['kl']:.2f}", f"{ev['mi']:.2f}", f"{ev['au']}/{ev.get('latent_dim', 32)}",
                                       f"{ev['bleu']:.1f}"]
        lines.append(f"| {label} | {nll} | {ev['ppl']:.1f} | {' | '.join(latent)} | "
                     f"{r['train_minutes']:.0f} min, {r['epochs']:.1f} epochs |")
    return lines


def replace_between(text: str, name: str, lines: list[str]) -> str:
    """``text`` with what lies between <!-- NAME --> and <!-- /NAME --> replaced."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"ptb_full_report: error: README.md needs one {start} ... {end} pair")
    head, rest = text.split(start)
    return head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end)[1]


def output_block(output: list[dict]) -> list[str]:
    """Each showcase command and what it printed, as markdown."""
    lines = []
    for item in output:
        lines += [f"`{item['command']}`", "", "```", *item["output"], "```", ""]
    return lines


def update_readme(readme: Path, rows: list[dict], best: tuple[str | None, str | None], output: list[dict],
                  labels: dict[str, str]) -> None:
    """The README's hour-long table and the best VAE's real output, between
    their markers; the prose around them is written by hand."""
    text = replace_between(readme.read_text(), "ptb-full-table", readme_table(rows, best, labels))
    header = f"Real output of the best VAE (`{best[1]}` of the hour-long runs above):"
    text = replace_between(text, "ptb-full-output", [header, "", *output_block(output)][:-1])
    readme.write_text(text)


def published_table(published: list[dict]) -> list[str]:
    lines = ["| paper | model | NLL | PPL | KL | MI | AU |", "|---|---|---|---|---|---|---|"]
    for p in published:
        lines.append(f"| {p.get('citation', p.get('paper'))} | {p['model']} | {cell(p.get('nll'))} | "
                     f"{cell(p.get('ppl'))} | {cell(p.get('kl'))} | {cell(p.get('mi'))} | {cell(p.get('au'))} |")
    return lines
