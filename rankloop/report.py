"""The run report: ``report.html`` with plots, and a summary table printed with rich.

Plots (matplotlib, embedded as PNG):

1. reward-model accuracy on held-out rankings, per round;
2. gold score and proxy reward against the KL from the reference, per PPO iteration and per round
   — the over-optimisation view of Gao et al. (2022): the x axis is √KL, both scores are shown as
   the change from where the policy started, so a proxy that keeps rising while the gold score
   turns down is visible at a glance;
3. PPO's own curves: reward, KL and the adaptive KL coefficient.

Then samples of the initial and the final policy on the same held-out prompts, with their gold
scores and rewards.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from rankloop.loop import (
    DPOResult,
    GroupResult,
    RoundResult,
    read_demonstrations_stage,
    read_eval,
    read_rounds,
    round_dir,
)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _round_row(r: RoundResult) -> dict:
    """A round's line of the summary (None: the stage has not finished or did not measure it)."""
    lab, rm, ppo, ev = r.label, r.reward, r.ppo, r.eval
    return {
        "round": r.round,
        "rankings": None if lab is None else lab.rankings,
        "sigma": None if lab is None else lab.sigma,
        "agreement": None if lab is None else lab.agreement,
        "rm_train_rankings": None if rm is None else rm.train_rankings,
        "rm_accuracy": None if rm is None else rm.rm_accuracy,
        "ppo_iterations": None if ppo is None else ppo.iterations,
        "ppo_final_kl_ref": None if ppo is None else ppo.final_kl_ref,
        "kl_from_initial": None if ev is None else ev.kl_from_initial,
        "gold": None if ev is None else ev.gold,
        "proxy": None if ev is None else ev.proxy,
        "proxy_initial": None if ev is None else ev.proxy_initial,
        "win_rate_vs_initial": None if ev is None else ev.win_rate_vs_initial,
        **_learner_fields(r),
    }


def _learner_fields(r: RoundResult) -> dict:
    """A round's learner figures beyond PPO's (none for a PPO round: its line is as it always was)."""
    if r.algorithm == "ppo":
        return {}
    x = r.learner
    out: dict[str, Any] = {"algorithm": r.algorithm}
    if isinstance(x, GroupResult):
        out.update(learner_steps=x.iterations, learner_final_reward=x.final_reward,
                   learner_final_kl_ref=x.final_kl_ref)
    elif isinstance(x, DPOResult):
        out.update(learner_steps=x.steps, learner_final_kl_ref=x.kl_ref, dpo_train_rankings=x.train_rankings,
                   dpo_final_loss=x.final_loss, dpo_eval_accuracy=x.eval_accuracy,
                   dpo_eval_chosen_logp=x.eval_chosen_logp, dpo_eval_chosen_logp_ref=x.eval_chosen_logp_ref)
    else:
        out["learner_steps"] = None
    return out


def _learner_cell(r: dict) -> str:
    """The learner column: PPO's iterations, or '<algorithm> <steps>'."""
    if "algorithm" not in r:
        return _fmt(r["ppo_iterations"])
    return f"{r['algorithm']} {_fmt(r.get('learner_steps'))}"


def _stage_golds(summary: dict) -> list[tuple[str, Any, Any]]:
    """(stage, gold score, KL) for every policy the run made: pre-trained, SFT, each round."""
    rows: list[tuple[str, Any, Any]] = [("pre-trained", summary.get("initial_gold"), 0.0)]
    if summary.get("sft") is not None:
        rows.append(("SFT (round 0)", summary["sft"].get("gold"), summary["sft"].get("kl_from_initial")))
    for r in summary["rounds"]:
        rows.append((f"round {r['round']} ({r.get('algorithm', 'ppo')})", r["gold"], r["kl_from_initial"]))
    return rows


def summarise(run: str | Path, timings: list[dict] | None = None, total_seconds: float | None = None) -> dict:
    """Everything the report shows, as one JSON-able dict, from the run's stage results."""
    run = Path(run)
    initial = read_eval(run / "eval" / "initial.json")
    rounds = read_rounds(run)
    final = rounds[-1].eval if rounds else None
    final_rm = rounds[-1].reward if rounds else None
    gold_0 = None if initial is None else initial.gold
    gold_1 = None if final is None else final.gold
    out = {
        "run": str(run),
        "initial_gold": gold_0,
        "final_gold": gold_1,
        "gold_rose": gold_0 is not None and gold_1 is not None and gold_1 > gold_0,
        "win_rate_vs_initial": None if final is None else final.win_rate_vs_initial,
        "final_kl": None if final is None else final.kl_from_initial,
        "rm_accuracy": None if final_rm is None else final_rm.rm_accuracy,
        "rounds": [_round_row(r) for r in rounds],
    }
    demos, sft, sft_eval = read_demonstrations_stage(run)
    if sft is not None:  # round 0 ran: demonstrations → SFT (only then, so a PPO-only summary is as before)
        out["sft"] = {"demonstrations": None if demos is None else demos.demonstrations,
                      "demonstration_source": None if demos is None else demos.source,
                      "steps": sft.steps, "final_loss": sft.final_loss,
                      "gold": None if sft_eval is None else sft_eval.gold,
                      "kl_from_initial": None if sft_eval is None else sft_eval.kl_from_initial,
                      "win_rate_vs_initial": None if sft_eval is None else sft_eval.win_rate_vs_initial}
    if timings is not None:
        out["timings"] = timings
    if total_seconds is not None:
        out["total_seconds"] = round(total_seconds, 2)
    return out


# ---------------------------------------------------------------- plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _binned(x: list[float], *ys: list[float], bins: int = 8) -> tuple[list[float], ...]:
    """Means of ``ys`` in ``bins`` equal-count bins of ``x`` (the per-iteration KL is noisy)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    size = max(1, math.ceil(len(order) / bins))
    chunks = [order[s:s + size] for s in range(0, len(order), size)]
    out = [[sum(x[i] for i in c) / len(c) for c in chunks]]
    for y in ys:
        out.append([sum(y[i] for i in c) / len(c) for c in chunks])
    return tuple(out)


def _plots(run: Path, summary: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: list[tuple[str, str]] = []
    rounds = summary["rounds"]

    # 1. reward-model accuracy per round
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [r["round"] for r in rounds if r.get("rm_accuracy") is not None]
    ys = [r["rm_accuracy"] for r in rounds if r.get("rm_accuracy") is not None]
    if xs:
        ax.plot(xs, ys, "o-", color="tab:blue")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.set_xticks([r["round"] for r in rounds] or [0])
    ax.set_title("Reward model accuracy (vs the gold preference)")
    ax.legend(loc="lower right")
    figs.append(("Reward-model accuracy", _png(fig)))

    # 2. gold and proxy against √KL (per PPO iteration, per round)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_line = False
    for r in rounds:
        d = round_dir(run, r["round"]).policy
        metrics = _read_jsonl(d / "metrics.jsonl")
        gold = _read_jsonl(d / "gold.jsonl")
        n = min(len(metrics), len(gold))
        if n == 0:  # not run yet, or DPO (no rollouts)
            continue
        kl_key = f"{r.get('algorithm', 'ppo')}/kl_ref"
        x = [math.sqrt(max(m[kl_key], 0.0)) for m in metrics[:n]]
        g0, p0 = gold[0]["gold"], gold[0]["proxy"]
        c = colours[r["round"] % len(colours)]
        dp = [g["proxy"] - p0 for g in gold[:n]]
        dg = [g["gold"] - g0 for g in gold[:n]]
        ax.scatter(x, dp, marker="s", s=10, color=c, alpha=0.3)
        ax.scatter(x, dg, marker="o", s=10, color=c, alpha=0.3)
        bx, bp, bg = _binned(x, dp, dg)
        ax.plot(bx, bp, "--", color=c, label=f"round {r['round']}: proxy (RM), binned mean")
        ax.plot(bx, bg, "-", color=c, lw=2, label=f"round {r['round']}: gold, binned mean")
        any_line = True
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("√KL(π ‖ π_ref = the initial policy)  per response, nats^½")
    ax.set_ylabel("change from the start of the round")
    ax.set_title("Gold score vs proxy reward along PPO (Gao et al. 2022 view)")
    if any_line:
        ax.legend(fontsize=8)
    figs.append(("Over-optimisation: gold vs proxy against KL (per PPO iteration)", _png(fig)))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    pts = [(0.0, summary.get("initial_gold"), 0.0)]
    for r in rounds:
        if r.get("kl_from_initial") is not None and r.get("gold") is not None:
            dp = (r["proxy"] - r["proxy_initial"]) if r.get("proxy") is not None and r.get("proxy_initial") is not None else None
            pts.append((math.sqrt(max(r["kl_from_initial"], 0.0)), r["gold"], dp))
    if pts[0][1] is not None and len(pts) > 1:
        g0 = pts[0][1]
        ax.plot([p[0] for p in pts], [p[1] - g0 for p in pts], "o-", label="gold (held-out)")
        ax.plot([p[0] for p in pts if p[2] is not None], [p[2] for p in pts if p[2] is not None], "s--",
                label="proxy: this round's RM, policy − initial")
        for i, p in enumerate(pts):
            ax.annotate("start" if i == 0 else f"r{i - 1}", (p[0], p[1] - g0), textcoords="offset points", xytext=(4, 4))
        ax.legend(fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("√KL(π ‖ π_initial)  per response, held-out prompts")
    ax.set_ylabel("change from the initial policy")
    ax.set_title("Per round, on held-out prompts")
    figs.append(("Per round: gold and proxy against KL from the initial policy", _png(fig)))

    # 3. PPO curves
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    off = 0
    for r in rounds:
        if r.get("algorithm") == "dpo":
            continue  # no rollouts: its curves are DPO's own (round-R/policy/metrics.jsonl)
        metrics = _read_jsonl(round_dir(run, r["round"]).policy / "metrics.jsonl")
        metrics = [m for m in metrics if "iteration" in m]
        kl_key = f"{r.get('algorithm', 'ppo')}/kl_ref"
        it = [off + m["iteration"] for m in metrics]
        c = colours[r["round"] % len(colours)]
        axes[0].plot(it, [m["objective/reward"] for m in metrics], color=c, label=f"round {r['round']}")
        axes[1].plot(it, [m[kl_key] for m in metrics], color=c)
        axes[2].plot(it, [m.get("kl_coef", float("nan")) for m in metrics], color=c)
        off += len(metrics)
    titles = ("proxy reward (RM score)", "KL to the reference, the initial policy (k3)", "β (adaptive KL coefficient)")
    for a, t in zip(axes, titles):
        a.set_title(t, fontsize=10)
        a.set_xlabel("PPO iteration")
    if rounds:
        axes[0].legend(fontsize=8)
    figs.append(("PPO", _png(fig)))
    return figs


# ---------------------------------------------------------------- HTML and the table


def _samples_html(run: Path, summary: dict, n: int = 8) -> str:
    rounds = summary["rounds"]
    before = _read_jsonl(run / "eval" / "initial.samples.jsonl")
    after = _read_jsonl(round_dir(run, rounds[-1]["round"]).eval_samples) if rounds else []
    if not before or not after:
        return "<p>No samples (no held-out prompts).</p>"
    rows = []
    seen = set()
    for b, a in zip(before, after):
        if b["prompt_id"] in seen:
            continue
        seen.add(b["prompt_id"])

        def cell(x: dict) -> str:
            score = f"gold {x['gold']:+.2f}" if "gold" in x else ""
            if "proxy" in x:
                score += f" · RM {x['proxy']:+.2f}"
            return f"<td><pre>{html.escape(x['response'].strip())}</pre><small>{score}</small></td>"

        rows.append(f"<tr><td><pre>{html.escape(b['prompt'])}</pre></td>{cell(b)}{cell(a)}</tr>")
        if len(rows) >= n:
            break
    return ("<table class='samples'><tr><th>prompt</th><th>initial policy</th><th>final policy</th></tr>"
            + "".join(rows) + "</table>")


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _stage_table_html(summary: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_fmt(g)}</td><td>{_fmt(kl)}</td></tr>"
                   for name, g, kl in _stage_golds(summary))
    return f"<table><tr><th>policy</th><th>gold score</th><th>KL from its start</th></tr>{rows}</table>"


def _budget_html(b: dict | None) -> str:
    """The label-budget comparison (``rankloop.quickstart.compare_sft_budget``), when it ran."""
    if not b:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(a['arm'])}</td><td>{_fmt(a['demonstrations'])}</td><td>{_fmt(a['rankings'])}</td>"
        f"<td>{_fmt(a['labeler_seconds'], '.0f')}</td><td>{_fmt(a.get('gold'))}</td>"
        f"<td>{_fmt(a.get('win_rate_vs_pretrained'))}</td><td>{_fmt(a.get('kl_from_reference'))}</td></tr>"
        for a in b["arms"])
    return (f"<h2>Same label budget: {_fmt(b['budget_labeler_seconds'], '.0f')} labeler-seconds</h2>"
            f"<p>Assumed costs: one demonstration {_fmt(b['demonstration_seconds'], '.0f')} s, one ranking of K = "
            f"{b['k']} {_fmt(b['ranking_seconds'], '.0f')} s (see rankloop.quickstart.DEMO_SECONDS). Held-out "
            "prompts, by the gold preference; each arm one round.</p>"
            "<table><tr><th>policy</th><th>demonstrations</th><th>rankings</th><th>labeler-seconds</th>"
            f"<th>gold score</th><th>win rate vs pre-trained</th><th>KL from its reference</th></tr>{rows}</table>")


def _learners_html(run: Path, c: dict | None) -> str:
    """The learners' comparison (``rankloop.compare``), when it ran (``quickstart --compare``)."""
    if not c:
        return ""
    import base64

    from rankloop.compare import table

    lines = table(c).splitlines()
    head = "".join(f"<th>{html.escape(x.strip())}</th>" for x in lines[0].strip("|").split("|"))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(x.strip())}</td>" for x in ln.strip("|").split("|")) + "</tr>"
                   for ln in lines[2:])
    png = run / "compare" / "frontier.png"
    img = (f"<img src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'/>"
           if png.exists() else "")
    v = c.get("verdict") or {}
    verdict = (f"<p>Best: <b>{html.escape(str(v['best']))}</b> (β {v['best_kl_strength']:g}), win rate "
               f"{_fmt(v['win_rate'])}, {v['lead']:+.3f} over {html.escape(str(v['runner_up']))}; "
               f"{'outside' if v.get('outside_seed_spread') else 'inside'} the seeds' spread.</p>" if v else "")
    return (f"<h2>The learners' comparison (same rankings and reward model; mean over seeds [min, max])</h2>"
            f"{verdict}<table><tr>{head}</tr>{rows}</table>{img}")


def write_report(run: str | Path, summary: dict, print_table: bool = True) -> Path:
    """Write ``report.html`` in the run directory and print the summary table."""
    run = Path(run)
    figs = _plots(run, summary)
    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{_fmt(r['rankings'])}</td><td>{_fmt(r['agreement'])}</td>"
        f"<td>{_fmt(r['rm_accuracy'])}</td><td>{html.escape(_learner_cell(r))}</td><td>{_fmt(r['kl_from_initial'])}</td>"
        f"<td>{_fmt(r['proxy'])}</td><td>{_fmt(r['gold'])}</td><td>{_fmt(r['win_rate_vs_initial'])}</td></tr>"
        for r in summary["rounds"])
    timing_rows = "".join(
        f"<tr><td>{html.escape(t['stage'])}</td><td>{_fmt(t.get('seconds'), '.1f')}</td>"
        f"<td>{_fmt(t.get('peak_rss_mib'), '.0f')}</td><td>{'yes' if t.get('skipped') else ''}</td></tr>"
        for t in summary.get("timings", []))
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'/>" for t, b in figs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rankloop report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
pre{{white-space:pre-wrap;margin:0;font-size:0.9em}}img{{max-width:100%}}.samples td{{width:33%}}</style></head><body>
<h1>rankloop run: {html.escape(str(run))}</h1>
<p>Initial policy gold score <b>{_fmt(summary.get('initial_gold'))}</b> → final <b>{_fmt(summary.get('final_gold'))}</b>;
win rate of the final policy against the initial one by the gold preference on held-out prompts
<b>{_fmt(summary.get('win_rate_vs_initial'))}</b>; KL from the initial policy <b>{_fmt(summary.get('final_kl'))}</b> nats per response.
Total time {_fmt(summary.get('total_seconds'), '.0f')} s.</p>
<h2>Gold score per stage and round (held-out prompts)</h2>{_stage_table_html(summary)}
<table><tr><th>round</th><th>rankings</th><th>labeler agreement</th><th>RM accuracy</th><th>learner steps</th>
<th>KL from initial</th><th>proxy reward</th><th>gold score</th><th>win rate vs initial</th></tr>{rows}</table>
{_budget_html(summary.get("sft_budget"))}
{_learners_html(run, summary.get("learners"))}
{imgs}
<h2>Samples before and after (held-out prompts)</h2>{_samples_html(run, summary)}
<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>peak RSS MiB</th><th>resumed</th></tr>{timing_rows}</table>
</body></html>"""
    from rankloop.io import atomic_write_text

    out = run / "report.html"
    atomic_write_text(out, page)
    if print_table:
        print_summary(summary, out)
    return out


def print_summary(summary: dict, report: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Short headers so the table fits an 80-column terminal; the caption spells them out.
    t = Table(title="rankloop — summary", title_justify="left", caption_justify="left",
              caption="labels: rankings collected · agree: labelers' pairwise agreement · KL: nats per response "
                      "from the reference (the initial policy, or the SFT model) · win: gold win rate against the initial policy")
    for col in ("round", "labels", "agree", "RM acc", "learner", "KL", "proxy", "gold", "win"):
        t.add_column(col, justify="right")
    t.add_row("initial", "", "", "", "", "0", "", _fmt(summary.get("initial_gold")), "")
    if summary.get("sft") is not None:
        sft = summary["sft"]
        t.add_row("SFT", _fmt(sft.get("demonstrations")), "", "", f"sft {_fmt(sft.get('steps'))}",
                  _fmt(sft.get("kl_from_initial")), "", _fmt(sft.get("gold")), _fmt(sft.get("win_rate_vs_initial")))
    for r in summary["rounds"]:
        t.add_row(str(r["round"]), _fmt(r["rankings"]), _fmt(r["agreement"]), _fmt(r["rm_accuracy"]),
                  _learner_cell(r), _fmt(r["kl_from_initial"]), _fmt(r["proxy"]), _fmt(r["gold"]),
                  _fmt(r["win_rate_vs_initial"]))
    console.print(t)
    if summary.get("timings"):
        tt = Table(title="stages", title_justify="left")
        tt.add_column("stage")
        tt.add_column("seconds", justify="right")
        tt.add_column("peak RSS MiB", justify="right")
        for x in summary["timings"]:
            tt.add_row(x["stage"] + (" (done before)" if x.get("skipped") else ""), _fmt(x.get("seconds"), ".1f"),
                       _fmt(x.get("peak_rss_mib"), ".0f"))
        if summary.get("total_seconds") is not None:
            tt.add_row("[bold]total[/]", _fmt(summary["total_seconds"], ".1f"), "")
        console.print(tt)
    if summary.get("sft_budget"):
        b = summary["sft_budget"]
        tb = Table(title=f"same label budget: {b['budget_labeler_seconds']:.0f} labeler-seconds "
                         f"(demonstration {b['demonstration_seconds']:.0f} s, ranking of {b['k']} "
                         f"{b['ranking_seconds']:.0f} s)", title_justify="left")
        for col in ("policy", "demos", "rankings", "gold", "win", "KL"):
            tb.add_column(col, justify="right")
        for a in b["arms"]:
            tb.add_row(a["arm"], _fmt(a["demonstrations"]), _fmt(a["rankings"]), _fmt(a.get("gold")),
                       _fmt(a.get("win_rate_vs_pretrained")), _fmt(a.get("kl_from_reference")))
        console.print(tb)
    if report is not None:
        console.print(f"report: [bold]{report}[/]")
