"""results/ptb.md and .json: the Penn Treebank table at full strength, an
hour of training per run, from the runs in runs/ptb-full, with the published
figures beside ours and the real output of the best VAE.

Each row is trained by `textvae train` with `--time-budget 60` and evaluated
by `textvae eval` on the test split; both commands are kept with the row
(`eval_test.json` records the evaluation's own command and device). Rows not
trained yet are listed as such.

    python scripts/ptb_full_report.py [--runs runs/ptb-full]
    python scripts/ptb_full_report.py --evaluate 500 [--device cuda] [--data ../shared/data/ptb]

With ``--evaluate K`` it first evaluates, one after the other, every trained
row whose test evaluation used fewer than K importance samples (or none),
keeping the previous one as ``eval_test_kN.json``; a stopped pass continues
where it was, since rows already at K are skipped. The language models are
exact and are evaluated once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "textvae train --data ../shared/data/ptb --out runs/ptb-full/{name} --config ptb-lstm --config configs/ptb/full.yaml"
ROWS = {  # name: (what, extra training flags)
    "lm": ("LSTM language model (no latent)", "--config configs/ptb/lm.yaml"),
    # A recipe probe, not a row of the published table: less dropout for a short budget.
    "lm-dropout-0.3": ("LSTM language model, dropout 0.3 instead of 0.5",
                       "--config configs/ptb/lm.yaml --set model.dropout=0.3"),
    "vae": ("VAE, no remedy", "--config configs/ptb/vae.yaml"),
    # The annealing rows reach weight 1 after 4 epochs (5,260 steps of 32), not
    # the configs' 10: an hour at one thread is about 8.5 epochs here.
    "anneal": ("KL annealing, linear 0.1 -> 1 over 4 epochs",
               "--config configs/ptb/anneal.yaml --set objective.kl_warmup_steps=5260"),
    "anneal-wdrop": ("annealing over 4 epochs + word dropout 0.5",
                     "--config configs/ptb/anneal-wdrop.yaml --set objective.kl_warmup_steps=5260"),
    "cyclical": ("cyclical annealing, 4 cycles (Fu et al. 2019)", "--config configs/ptb/cyclical.yaml"),
    "free-bits": ("free bits 0.25 nats/dim (batch level)", "--config configs/ptb/free-bits.yaml"),
    # The aggressive phase checks MI every 100 steps (He et al.: once an epoch)
    # and lasts at most 200 steps: each costs about 40 ordinary ones.
    "aggressive": ("aggressive encoder training (at most 200 steps) + annealing over 4 epochs (He et al. 2019)",
                   "--config configs/ptb/aggressive.yaml --set objective.kl_warmup_steps=5260 "
                   "--set train.aggressive_eval_every=100 --set train.aggressive_max_steps=200"),
    "ae-fb": ("AE pretraining (2 epochs), fresh decoder, free bits (Li et al. 2019)",
              "--config configs/ptb/ae-fb.yaml --set train.ae_pretrain_epochs=2"),
    "bn-vae": ("BN-VAE, gamma 0.7 (Zhu et al. 2020)",
               "--config configs/ptb/bn-vae.yaml --set model.bn_vae_gamma=0.7"),
    # The two VAE rows that keep their latent in use, again with the probe's dropout 0.3.
    "ae-fb-d0.3": ("ae-fb with dropout 0.3",
                   "--config configs/ptb/ae-fb.yaml --set train.ae_pretrain_epochs=2 --set model.dropout=0.3"),
    "bn-vae-d0.3": ("bn-vae with dropout 0.3",
                    "--config configs/ptb/bn-vae.yaml --set model.bn_vae_gamma=0.7 --set model.dropout=0.3"),
}
TRAIN_FLAGS = "--time-budget 60 --set train.num_threads=1"
NOTES = """\
## What was tried, and what it gave

- Recipe (`configs/ptb/full.yaml`): the ptb-lstm model with Adam at 2e-3, a
  cosine decay to zero over the hour and tied input/output embeddings. On this
  session's CPU (AMD EPYC without AVX-512: bf16 is emulated, so the runs are
  fp32) an hour at one thread bought 8.5 epochs of the LM (11,193 steps) and
  7.1 of the BN-VAE (9,398 steps), two runs side by side.
- The LM reached 115.34 nats on the test split (PPL 193), against the
  published 101.04: the target is not met. Its training loss with dropout
  (about 120 to 130 nats) stayed above its validation NLL (116.2) to the end,
  and validation improved by only 0.13 nats over the last 1.5 epochs at a
  learning rate falling to zero: dropout 0.5 with 8 epochs underfits. The
  papers' recipe trains 40+ epochs with the same dropout. What an hour needs
  here is either more epochs per hour (both threads for one run, or a cheaper
  output layer: the 256 x 10,003 projection is about 80% of a step in fp32) or
  less regularisation for the short budget (on another corpus, 5 epochs
  without dropout beat the ptb-lstm recipe by 10 nats).
- BN-VAE with gamma 0.7 (a KL floor of 32 x 0.49 / 2 = 7.8 nats) keeps all 32
  units active with KL about 8 and MI about 4.8 throughout; on the test split
  its IW-NLL (100 samples) is 117.94, 2.6 nats above the LM's 115.34, with KL
  7.93, MI 4.80 and 32/32 active units, and its reconstructions score BLEU
  5.1. So the VAE target (IW-NLL at or below the LM's with KL >= 6, MI >= 5,
  32/32 AU) is not met either: KL and AU are, MI falls 0.2 short, and the
  NLL is 2.6 nats above. The evaluation used 100 importance samples, not the
  protocol's 500: 500 would take about 80 minutes at one thread of this CPU
  in fp32 (the 256 x 10,003 output projection alone is 211 TFLOP); more
  samples can only lower the estimate.
- AE pretraining + free bits (Li et al. 2019; `configs/ptb/ae-fb.yaml`, free
  bits 0.25 nats per dimension at batch level) with 2 of the hour's epochs
  of autoencoder training (KL weight 0), then a freshly initialised decoder
  trained as a VAE for the rest of the hour with its own cosine decay: 10,029
  steps in all (2 + 5.6 epochs). On the test split its IW-NLL (100 samples)
  is **109.09, 6.25 nats below the LM's 115.34** (PPL 145 against 193), with
  KL 7.48, MI 5.04, 32/32 active units and reconstruction BLEU 4.6 (ELBO
  -112.08, itself below the LM). So the VAE target is met: IW-NLL at or
  below the LM's, KL >= 6, MI >= 5, 32/32 AU. Its validation -ELBO passed
  the LM's final validation NLL (116.2) one epoch into the VAE phase and was
  still falling at the end (113.01). Why it beats the LM by more than the
  papers' 1 nat: both underfit at dropout 0.5 in an hour, and the decoder
  that reads z learns faster than the one that does not (the encoder,
  trained first, hands it the sentence's length and topic from the start).
  The evaluation used 100 importance samples (about 20 minutes at one
  thread); 500 can only lower the estimate.
- Cyclical annealing (Fu et al. 2019; 4 cycles over the hour, the weight
  rising from 0 to 1 over the first half of each) ends nearly collapsed:
  12,110 steps (9.2 epochs), test IW-NLL (100 samples) 115.42 against the
  LM's 115.34, KL 0.13, MI 0.12, 3/32 active units, BLEU 6.5. Validation KL
  rose to 0.5-0.8 nats while the weight was low and fell back to 0.1-0.2 at
  each plateau of weight 1: with a weight that returns to 1, the decoder
  (LSTM, z at every input) learns to do without z again in every cycle.
  The published cyclical row (Fu et al. 2019 as quoted by Optimus) keeps a
  little more, KL 1.37, MI 1.27 and 5 active units, after far more epochs.
- Annealing + word dropout 0.5 (Bowman et al. 2016; the weight from 0.1 to
  1 over the first 4 epochs, 5,260 steps) keeps a little information: 12,767
  steps (9.7 epochs), test IW-NLL (100 samples) 119.80, 4.5 nats above the
  LM, KL 1.01, MI 1.00, 3/32 active units, BLEU 3.1. Validation KL settled
  at 1.1 nats once the weight reached 1 and stayed there. Half the decoder's
  inputs dropped costs more likelihood than the latent gives back in this
  budget; Bowman et al. report KL 2 and a PPL of 119 against their LM's 116.
- Free bits 0.25 nats per dimension (batch level): 13,006 steps (9.9
  epochs), test IW-NLL (100 samples, 2 threads) 115.81, 0.47 above the LM,
  with KL 7.19, MI 3.86, 32/32 active units and BLEU 5.2: the latent stays
  in use, but free bits alone does not pay for itself in an hour (ae-fb,
  the same free bits after AE pretraining, is 6.7 nats lower).
- Plain VAE (KL weight 1 from the start, no remedy): collapsed within the
  first epoch (validation KL 0.16 nats and 8 active units at epoch 1, 0.03
  and none at epoch 4) and stayed so: 13,369 steps (10.2 epochs), test
  IW-NLL (100 samples) 114.44, KL 0.005, MI 0.006, 0/32 active units, BLEU
  6.4. A collapsed VAE is a language model, and this one is 0.9 nats below
  the LM row because it got 19% more steps in its hour (13,369 against
  11,193; the two ran beside different jobs): the LM row undersells the
  recipe by about that much.
- Aggressive training (He et al. 2019; the weight from 0.1 to 1 over 4
  epochs; MI checked every 100 steps, the phase capped at 200): MI rose from
  7.35 to 7.54 between the checks at steps 100 and 200, so the phase ran to
  its cap, 200 steps with 7,800 encoder-only steps inside them, about 34 of
  the 60 minutes. The remaining 26 minutes bought 5,615 ordinary steps:
  5,815 in all (4.4 epochs), test IW-NLL (100 samples) 127.36, KL 2.75, MI
  2.29, 32/32 active units, BLEU 8.0 (the best BLEU of the table, the
  worst NLL). The latent stays in use, but in an hour the phase leaves too
  little training for the decoder; He et al. train for 40+ epochs after it
  (their row: NLL 99.83 with KL 0.93).
- Less dropout for the short budget (a recipe probe, the LM only):
  dropout 0.3 instead of 0.5, all else the same, 13,578 steps (10.3
  epochs): test NLL **108.78** (exact; PPL 143.0), 6.56 nats below the
  dropout-0.5 LM's 115.34. Validation was 5 nats ahead at step 2,630
  (119.43 against 124.25) and passed the 0.5 LM's final 116.24 at step
  5,260, a third of the way. So dropout 0.5 was the larger part of the gap
  to the published 101.04; the rest is epochs (10 here, 40+ there): over
  the last tenth of its steps the training loss, dropout on, averaged 110.9
  nats, no lower than the final validation NLL (109.8), with the learning
  rate already near zero, so even at 0.3 the model underfits rather than
  overfits, and only more steps would move it. The LM target (<= 101.0) is
  not met: 7.7 nats short. Against this LM, ae-fb (trained at dropout 0.5)
  is 0.31 nats above, so the VAE target had to be met again at dropout 0.3
  (below).
- KL annealing alone (Bowman et al. 2016; 0.1 to 1 over 4 epochs, no word
  dropout): 11,375 steps (8.7 epochs), test IW-NLL (100 samples) 115.30, KL
  0.33, MI 0.32, 2/32 active units, BLEU 5.9. Validation KL
  was 3.6 nats with 31 active units at epoch 1 (weight 0.33) and fell to
  0.4 nats and 3 units once the weight reached 1: annealing delays the
  collapse, it does not prevent it.
- Dropout 0.3 for the two VAEs that keep their latent in use, all else as in
  their rows. ae-fb: 9,303 steps (2 epochs of autoencoder, then 5.1 of VAE;
  7.1 in all), validation -ELBO 109.96 at the end against 113.01 at dropout
  0.5; on the test split, with the protocol's 500 importance samples (75
  minutes at one or two threads, as the load allowed), IW-NLL **106.08**,
  2.70 nats below the dropout-0.3 LM's 108.78, with KL 7.77, MI 5.66, 32/32
  active units and reconstruction BLEU 6.8. So the VAE target is met against
  the stronger LM. bn-vae (gamma 0.7): 9,398 steps (7.1 epochs), validation
  -ELBO 116.81 against 122.57 at dropout 0.5; test IW-NLL (100 samples)
  112.68, 3.90 above the dropout-0.3 LM, with KL 7.71, MI 5.34, 32/32 active
  units, BLEU 7.1.
"""


def row(name: str, runs: Path) -> dict:
    what, flags = ROWS[name]
    run = runs / name
    result = {"run": name, "what": what,
              "train_command": f"{BASE.format(name=name)} {flags} {TRAIN_FLAGS}"}
    if not (run / "eval_test.json").exists():
        result["status"] = "not trained yet" if not run.exists() else "not evaluated yet"
        return result
    sys.path.insert(0, str(ROOT))
    from textvae.training.info import run_info

    info = run_info(run)
    ev = json.loads((run / "eval_test.json").read_text())
    result.update(status="done", steps=info.step, epochs=info.epoch, stop_reason=info.stop_reason,
                  train_minutes=round(info.seconds / 60, 1), eval=ev, eval_command=ev.get("command"))
    return result


def evaluate(runs: Path, samples: int, data: str, device: str) -> None:
    """Bring every trained row's test evaluation to ``samples`` importance samples."""
    sys.path.insert(0, str(ROOT))
    from textvae.training.info import run_info

    for name in ROWS:
        run = runs / name
        if not (run / "config.json").exists() or not run_info(run).finished:
            continue
        path = run / "eval_test.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old is not None and ("mi" not in old or old["settings"]["iw_samples"] >= samples):
            continue  # an LM's NLL is exact; or already at K
        if old is not None:
            path.rename(run / f"eval_test_k{old['settings']['iw_samples']}.json")
        command = [sys.executable, "-m", "textvae", "eval", str(run), "--data", data, "--iw-samples", str(samples),
                   "--device", device]
        print(f"$ textvae {' '.join(command[3:])}", file=sys.stderr, flush=True)
        if subprocess.run(command, cwd=ROOT, env=os.environ).returncode != 0:
            raise SystemExit(f"evaluation of {name} failed")


def cell(value, digits=2) -> str:
    if value is None:
        return "–"
    return f"{value:d}" if isinstance(value, int) else f"{value:.{digits}f}"


SHOWCASE = [  # what a user runs on the best VAE; the README pastes the output
    ("samples", ["sample", "{run}", "-n", "8", "--seed", "0", "--top-p", "0.9"]),
    ("interpolation", ["interpolate", "{run}", "the company said it expects to report a loss",
                       "he was n't sure what to do", "--steps", "6", "--strategy", "beam", "--beam-size", "5"]),
    ("completions", ["complete", "{run}", "the company said", "-n", "5", "--seed", "0"]),
]


def best_rows(rows: list[dict]) -> tuple[dict | None, dict | None]:
    """The best language model, and the best VAE that keeps its latent in use
    (the issue's bar: KL >= 6, MI >= 5, every unit active), by test NLL."""
    done = [r for r in rows if r["status"] == "done"]
    lms = [r for r in done if "mi" not in r["eval"]]
    vaes = [r for r in done if "mi" in r["eval"] and r["eval"]["kl"] >= 6 and r["eval"]["mi"] >= 5
            and r["eval"]["au"] == r["eval"].get("latent_dim", 32)]
    best = lambda group: min(group, key=lambda r: r["eval"]["nll"]) if group else None  # noqa: E731
    return best(lms), best(vaes)


def quote(arg: str) -> str:
    """A shell word as a person writes it: double quotes where they suffice."""
    if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'


def showcase(run: str) -> list[dict]:
    """Each SHOWCASE command on ``run`` at one thread, with its output."""
    out = []
    for key, args in SHOWCASE:
        args = [a.format(run=run) for a in args]
        result = subprocess.run([sys.executable, "-m", "textvae", "-q", *args], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode != 0:
            raise SystemExit(f"textvae {args[0]} failed: {result.stderr.strip()}")
        out.append({"what": key, "command": "textvae -q " + " ".join(map(quote, args)), "output": result.stdout.splitlines()})
    return out


def table(rows: list[dict]) -> list[str]:
    lines = ["| run | what | NLL | samples | PPL | ELBO | KL | MI | AU | BLEU | epochs | train time | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['run']} | {r['what']} | {r['status']} |" + " |" * 10)
            continue
        ev = r["eval"]
        samples = "exact" if "mi" not in ev else ev["settings"]["iw_samples"]
        lines.append(f"| {r['run']} | {r['what']} | {cell(ev['nll'])} | {samples} | {cell(ev['ppl'], 1)} | "
                     f"{cell(ev['elbo'])} | {cell(ev['kl'])} | {cell(ev.get('mi'))} | {cell(ev.get('au'))} | "
                     f"{cell(ev.get('bleu'), 1)} | {r['epochs']} | {r['train_minutes']} min | "
                     f"{ev.get('device', '?')} |")
    return lines


def published_table(published: list[dict]) -> list[str]:
    lines = ["| paper | model | NLL | PPL | KL | MI | AU |", "|---|---|---|---|---|---|---|"]
    for p in published:
        lines.append(f"| {p.get('citation', p.get('paper'))} | {p['model']} | {cell(p.get('nll'))} | "
                     f"{cell(p.get('ppl'))} | {cell(p.get('kl'))} | {cell(p.get('mi'))} | {cell(p.get('au'))} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ptb-full"))
    parser.add_argument("--evaluate", type=int, metavar="K", help="first evaluate rows below K importance samples")
    parser.add_argument("--data", default=os.environ.get("TEXTVAE_DATA", "../shared/data") + "/ptb")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.evaluate:
        if not (ROOT / args.data).is_dir():  # relative paths are the project root's
            sys.exit(f"ptb_full_report: error: no data at {args.data} (pass --data or set TEXTVAE_DATA)")
        evaluate(Path(args.runs), args.evaluate, args.data, args.device)
    rows = [row(name, Path(args.runs)) for name in ROWS]
    published = json.loads((ROOT / "results" / "ptb_published.json").read_text())
    lm, vae = best_rows(rows)
    output = showcase(str(Path(args.runs, vae["run"]).relative_to(ROOT))) if vae else []
    lines = [
        "# Penn Treebank at full strength: an hour of training per run",
        "",
        "Test split (3,761 sentences, 82,430 tokens with end-of-sentence); the ptb-lstm model (embedding 256, "
        "LSTM 256/256, latent 32, batch 32, dropout 0.5 unless the row says otherwise) with "
        "`configs/ptb/full.yaml`, each run capped at 60 minutes of training by `--time-budget 60` (validation "
        "included) on the 2-core machine, two runs side by side at one thread each. NLL in nats per sentence, "
        "by importance weighting with the number of samples given (exact for a language model); PPL = "
        "exp(total NLL / tokens incl. eos). Produced by `python scripts/ptb_full_report.py`; the earlier "
        "4-epoch table of every remedy is in [ptb_4epochs.md](ptb_4epochs.md).",
        "", *table(rows), "",
    ]
    if lm and vae:
        gap = vae["eval"]["nll"] - lm["eval"]["nll"]
        lines += [f"Best language model: `{lm['run']}`, {lm['eval']['nll']:.2f}. Best VAE that keeps its latent in "
                  f"use (KL >= 6, MI >= 5, every unit active): `{vae['run']}`, {vae['eval']['nll']:.2f} "
                  f"({vae['eval']['settings']['iw_samples']} samples), {abs(gap):.2f} nats "
                  f"{'below' if gap <= 0 else 'above'} that LM, KL {vae['eval']['kl']:.2f}, MI "
                  f"{vae['eval']['mi']:.2f}, {vae['eval']['au']} active units, reconstruction BLEU "
                  f"{vae['eval']['bleu']:.1f}.", ""]
    lines += ["## Published figures (not our runs)", "",
              "The He et al. 2019 protocol as reported by Li et al. 2019/2020, and Bowman et al. 2016's own setup; "
              "`ptb_published.json` holds the source text of every figure.", "", *published_table(published), ""]
    lines += ["## Commands (training, then evaluation)", ""]
    for r in rows:
        lines.append(f"- `{r['run']}`: `{r['train_command']}`"
                     + (f" then `{r['eval_command']}`" if r.get("eval_command") else ""))
    if output:
        lines += ["", f"## Real output of the best VAE (`{vae['run']}`)", ""]
        for item in output:
            lines += [f"`{item['command']}`", "", "```", *item["output"], "```", ""]
    lines += ["", NOTES]
    results = {"rows": rows, "best_lm": lm and lm["run"], "best_vae": vae and vae["run"], "showcase": output,
               "published": published}
    (ROOT / "results" / "ptb.json").write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "results" / "ptb.md").write_text("\n".join(lines))
    print("wrote results/ptb.md and results/ptb.json", file=sys.stderr)


if __name__ == "__main__":
    main()
