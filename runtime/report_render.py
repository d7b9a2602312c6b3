"""Render a run report (runtime.report's data) as report.json, report.md with PNG plots beside it,
and a self-contained report.html (plots embedded), all written atomically.

Plots need matplotlib (extra ``report``); without it the Markdown and JSON are still written and the
report says the plots were skipped.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from runtime.atomic import write_bytes, write_json, write_text
from runtime.session_settings import describe_settings

SENSITIVITY_ROWS = 20  # worst activations shown per INT8 artifact (report.json has all)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _guard_row(key: str, g: dict[str, Any]) -> list[str]:
    """A guard record as a table row; a record from before the agreement/class/KL criteria shows '-' for them."""
    limit = {k: g.get(k) for k in ("tolerance_points", "min_agreement_pct", "max_class_drop_points", "max_kl")}
    worst = "-"
    if g.get("worst_class") is not None:
        star = "*" if g.get("worst_significant_class") == g["worst_class"] else ""
        worst = (
            f"{g['worst_class_drop_points']:.2f}{star} (class {g['worst_class']}; {limit['max_class_drop_points']:g})"
        )
    return [
        key,
        g["verdict"],
        _pct(g["fp32_top1"]),
        _pct(g["int8_top1"]),
        f"{g['drop_points']:.2f} ({g['tolerance_points']:g})",
        f"{_pct(g['agreement'])} ({limit['min_agreement_pct']:g})" if "agreement" in g else "-",
        worst,
        f"{g['kl']:.2e} ({limit['max_kl']:g})" if "kl" in g else "-",
        ", ".join(g["kept_in_float"]) or "none",
        "; ".join(g.get("failures") or []) or "-",
    ]


def _top1_by_artifact(report: dict[str, Any]) -> dict[str, float]:
    return {s["stage"]: s["top1"] for s in report["ladder"] if s.get("available") and "top1" in s}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def sections(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, Markdown body) pairs shared by the Markdown and the HTML renderings."""
    run = report["run"]
    out = [
        (
            "Run",
            f"`{run['directory']}`: student **{run['student']}** at {run['input_size']}, method {run['method']}; "
            f"evaluated on **{report['dataset'] or 'no dataset (run `toolkit eval RUN --artifact all`)'}**."
            + (
                " **Paper protocol: selected on test** (the epoch, and PSC's prompt, were chosen by their top-1 on the "
                "test set, as the papers do: test numbers are optimistic)."
                if report["training"]["final"].get("selected_on") == "test"
                else ""
            ),
        )
    ]
    verdict_rows = [
        [
            v["target"],
            v["ship"]["label"] if v["ship"] else "nothing",
            f"{v['ship']['p50_ms']:.2f}" if v["ship"] else "-",
            f"{v['runner_up']['label']}: {v['runner_up']['why']}" if v["runner_up"] else "-",
            {True: "yes", False: "no", None: "-"}[v["int8_worth_it"]],
            v.get("reason", "-"),
        ]
        for v in report.get("verdicts", [])
    ]
    if verdict_rows:
        out.append(
            (
                "What to ship",
                "Per target, the fastest artifact (batch-1 p50, ms) whose checks all pass: parity for FP32 forms; "
                "for INT8, the export's accuracy guard and its agreement, per-class and KL criteria re-checked on the "
                "evaluation set.\n\n"
                + _table(["target", "ship", "p50", "runner-up", "INT8 worth it", "note"], verdict_rows),
            )
        )
    ladder_rows = []
    labels = {s["stage"]: s["label"] for s in report["ladder"]}
    for s in report["ladder"]:
        if not s.get("available"):
            ladder_rows.append([s["label"], "-", "-", "-", "-", s.get("reason", "not available")])
            continue
        agreement = "-" if "agreement" not in s else _pct(s["agreement"])
        kl = "-" if "kl" not in s else f"{s['kl']:.2e}"
        versus = labels.get(s.get("versus")) or s.get("note", "-")
        if "same_images" in s:
            same = s["same_images"]
            versus += (f" on its {same['n']:,} of {same['of']:,} images (this stage's top-1 there: "
                       f"{_pct(same['top1'])})")  # fmt: skip
        worst = "-"
        if s.get("worst_class") is not None:
            star = "*" if s.get("worst_significant_class") == s["worst_class"] else ""
            worst = f"{s['worst_class_drop_points']:.2f}{star} (class {s['worst_class']})"
        ladder_rows.append([s["label"], _pct(s["top1"]), agreement, kl, worst, versus])
    out.append(
        (
            "Fidelity ladder",
            "Top-1 (%), top-1 agreement (%), mean KL (nats) and the worst class's accuracy drop (points; * when "
            "significant by McNemar's test) with the stage it was made from.\n\n"
            + _table(["stage", "top-1", "agreement", "KL", "worst class", "compared with"], ladder_rows),
        )
    )
    top1 = _top1_by_artifact(report)
    lat_rows = [
        [
            r["target"],
            r["label"],
            _pct(top1.get(r["artifact"])),
            f"{r['p50_ms']:.2f}",
            "-" if r.get("iqr_ms") is None else f"{r['iqr_ms']:.2f}",
            "-" if r.get("round_spread_ms") is None else f"{r['round_spread_ms']:.2f} ({r['rounds']})",
            _num2(r.get("p90_ms")),
            _num2(r.get("p99_ms")),
            ", ".join(f"b{b}: {v:.0f}" for b, v in r["throughput"].items()),
        ]
        for r in report["latency"]
    ]
    out.append(
        (
            "Latency per target",
            "SingleStream (batch 1) latency in ms (IQR: p75 - p25 of all samples; rounds: max - min of the p50s "
            "of repeated rounds, their number in brackets) and Offline throughput in images/s (`toolkit bench`).\n\n"
            + (
                _table(["target", "artifact", "top-1", "p50", "IQR", "rounds", "p90", "p99", "throughput"], lat_rows)
                + _imported_note(report)
                if lat_rows
                else "No measurements yet: run `toolkit bench RUN --target ort-cpu-1t`."
            ),
        )
    )
    out += _efficiency_sections(report)
    out.append(("Model sizes", _table(["artifact", "MB"], [[s["label"], _mb(s["bytes"])] for s in report["sizes"]])))
    body = []
    if report["parity"]:
        p = report["parity"]
        body.append(
            f"ONNX parity vs PyTorch on {p['n']} images: max |logit diff| {p['max_abs_diff']:.2e}, "
            f"top-1 agreement {_pct(p['top1_agreement'])}%: {'passed' if p['passed'] else 'FAILED'}."
        )
    if report["calibration"]:
        c = report["calibration"]
        body.append(f"Calibration: {c['images']} images ({c['method']}) from the {c['source']}.")
    guard_rows = [_guard_row(key, g) for key, g in report["guards"].items()]
    if guard_rows:
        body.append(
            "Accuracy guard, on the held-out validation images: top-1 drop (points), top-1 agreement with FP32 (%), "
            "the worst class's drop (points; * when McNemar's test calls the loss significant, which is what "
            "fails it) and mean KL(FP32 || INT8) (nats), each against its limit in brackets.\n\n"
            + _table(
                [
                    "artifact",
                    "verdict",
                    "FP32 top-1",
                    "INT8 top-1",
                    "drop",
                    "agreement",
                    "worst class",
                    "KL",
                    "kept in float",
                    "why not",
                ],
                guard_rows,
            )  # fmt: skip
        )
    for key, sens in report.get("sensitivity", {}).items():
        kept = set((report["guards"].get(key) or {}).get("kept_in_float") or [])
        rows = [[str(i + 1), f"`{t['tensor']}`", f"{t['sqnr_db']:.1f}", ", ".join(t["consumers"]) or "(graph output)",
                 "yes" if kept & set(t["consumers"]) else "no"]
                for i, t in enumerate(sens["tensors"][:SENSITIVITY_ROWS])]  # fmt: skip
        body.append(
            f"Per-layer sensitivity of {key}: the {len(rows)} quantized activations with the lowest SQNR (dB; every "
            f"one of the {len(sens['tensors'])} in report.json) with every layer INT8, on {sens['images']} "
            "calibration images, and the layers that read them (names for `--keep-float`):\n\n"
            + _table(["#", "activation", "SQNR dB", "read by", "kept in float"], rows)
        )
    engine = report.get("tensorrt_engine")
    if engine:
        body.append(
            f"TensorRT engine: built on {engine.get('gpu')} (TensorRT {engine.get('tensorrt')})."
            if engine.get("built", True)
            else f"TensorRT engine: not built here: {engine.get('reason')}."
        )
    out.append(("Export decisions", "\n\n".join(body) or "Not exported yet: run `toolkit export RUN --int8`."))
    b2n = report["training"]["final"].get("base_to_new")
    if b2n:
        rows = [[label, _pct(b2n[label]["base_top1"]), _pct(b2n[label]["new_top1"]), _pct(b2n[label]["hm"])]
                for label in ("initial", "learned") if label in b2n]  # fmt: skip
        out.append((
            "Base-to-new",
            f"Trained on the base classes; the new ones ({', '.join(b2n['new_classes'])}) are classified zero-shot "
            f"among themselves with the prompt ({b2n['base_n']} base / {b2n['new_n']} new test images; add them "
            "to the classifier with `toolkit classes`):\n\n"
            + _table(["prompt", "base top-1 %", "new top-1 %", "harmonic mean %"], rows),
        ))  # fmt: skip
    hist = report["training"]["history"]
    if hist:
        staged = any("stage" in h for h in hist)  # `toolkit distill` runs: one row per epoch of each stage
        rows = [
            [h.get("stage", "")] * staged
            + [
                str(h["epoch"]),
                f"{h.get('train_loss', float('nan')):.4f}",
                _pct(h.get("val_top1")),
                f"{h.get('lr', 0):.4g}",
            ]
            for h in hist
        ]
        out.append(("Training", _table(["stage"] * staged + ["epoch", "train loss", "val top-1", "lr"], rows)))
    envs = report["environments"]
    if envs:
        lines = {}  # one line per distinct machine, naming the targets measured on it
        for target, env in envs.items():
            lines.setdefault(_environment_line(env), []).append(target)
        text = (next(iter(lines)) if len(lines) == 1
                else "\n".join(f"- {', '.join(targets)}: {line}" for line, targets in lines.items()))  # fmt: skip
        out.append(("Environment", text))
    return out


def _environment_line(env: dict[str, Any]) -> str:
    if "cpu" not in env:  # read back from a device tool (toolkit bench --import): what it said of itself
        return f"{env.get('device', 'a device')}, measured by {env.get('tool', 'its own tool')}."
    cpu = env["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    flags = ", ".join(cpu["flags"]) or "no listed ISA flags"
    board = f"{env['board']}: " if env.get("board") else ""
    return (f"{board}{cpu['model']} ({cpu['usable_cores']} usable cores; {flags}), {env['memory_gb']} GB, {env['os']}; "
            f"{versions}.")  # fmt: skip


def _num2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _imported_note(report: dict[str, Any]) -> str:
    """Which latency rows were measured on a device and read back (toolkit bench --import), and how checked."""
    seen = {}
    for r in report["latency"]:
        if r.get("imported"):
            i = r["imported"]
            where = f"`{r['target']}` measured on {i.get('device') or 'the device'} by {i.get('from')}"
            note = f"; {i['note']}" if i.get("note") else ""
            seen[r["target"]] = f"{where} and imported ({i.get('verified')}){note}"
    return "".join(f"\n\n{line}." for line in seen.values())


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct_or(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _efficiency_sections(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Compute efficiency (MACs, bytes, % of peak and of the measured GEMM ceiling) and the tuning sweeps."""
    sections = []
    rows = []
    for r in report["latency"]:
        c, f = r.get("costs") or {}, r.get("roofline") or {}
        if "macs" not in c:
            rows.append([r["target"], r["label"], c.get("unknown", "not counted"), *["-"] * 7])
            continue
        dw = c["by_kind"].get("depthwise")
        b1, big = f.get("batch_1", {}), f.get("largest_batch", {})
        rows.append([
            r["target"], r["label"], f"{c['macs'] / 1e9:.3f}", f"{c['bytes_moved'] / 1e6:.1f}",
            f"{c['macs_per_byte']:.1f}",
            "-" if not dw else f"{100 * dw['macs_share']:.0f}% / {100 * dw['bytes_share']:.0f}%",
            f"{b1.get('gmacs_per_s', 0):.0f}", _pct_or(b1.get("percent_of_peak")),
            _pct_or(b1.get("percent_of_gemm_ceiling")),
            f"b{big['batch_size']}: {_pct_or(big.get('percent_of_peak'))}" if big else "-",
        ])  # fmt: skip
    if rows:
        notes = []
        for target, p in (report.get("peaks") or {}).items():
            peak, ceiling = p.get("peak") or {}, p.get("gemm_ceiling") or {}
            text = (
                ", ".join(f"{k} {v:,.0f}" for k, v in peak["gmacs"].items()) + f" GMAC/s ({peak['basis']})"
                if "gmacs" in peak
                else peak.get("unknown", "peak unknown")
            )
            if "gmacs" in ceiling:
                text += "; measured GEMM ceiling " + ", ".join(f"{k} {v:,.0f}" for k, v in ceiling["gmacs"].items())
            notes.append(f"- {target}: peak {text}")
        sections.append((
            "Compute efficiency",
            "MACs counted from each artifact's graph (conv and matmul layers, batch 1); bytes each layer reads and "
            "writes at the artifact's precision if nothing stayed in cache; achieved GMAC/s at batch-1 p50, as % of "
            "the target's peak and of the GEMM rate measured on the same cores. Depthwise layers hold few MACs but "
            "many bytes: they are bound by memory, not arithmetic.\n\n"
            + _table(["target", "artifact", "GMAC", "MB moved", "MAC/byte", "depthwise MACs / bytes",
                      "GMAC/s b1", "% peak b1", "% GEMM ceiling b1", "% peak largest batch"], rows)
            + "\n\n" + "\n".join(notes),
        ))  # fmt: skip
    res_rows = [
        [
            r["target"], r["label"], "-" if r.get("load_s") is None else f"{r['load_s']:.3f}",
            _num((r.get("memory") or {}).get("session_mb")), _num((r.get("memory") or {}).get("peak_rss_mb")),
            (r.get("energy") or {}).get("mj_per_inference", "not available" if (r.get("energy") or {}) else "-"),
        ]
        for r in report["latency"]
        if r.get("memory")
    ]  # fmt: skip
    if res_rows:
        sections.append((
            "Memory, load time and energy",
            "Load: seconds to create the session (compile included). Session MB: resident memory the session added "
            "after its first inference; peak RSS: the bench process's peak while the artifact was measured. Energy: "
            "mJ per batch-1 inference from the machine's meter, where it has one.\n\n"
            + _table(["target", "artifact", "load s", "session MB", "peak RSS MB", "energy mJ/inference"], res_rows)
            + "".join(f"\n\nEnergy {why}." for why in sorted({(r.get("energy") or {}).get("unavailable")
                                                              for r in report["latency"]} - {None})),
        ))  # fmt: skip
    cross = [r for r in report["latency"] if r.get("cross_check")]
    if cross:
        rows_x = []
        for r in cross:
            c = r["cross_check"]
            if "p50_ms" in c:
                rows_x.append([r["target"], r["label"], f"{r['p50_ms']:.3f}", f"{c['p50_ms']:.3f}", c["tool"],
                               f"{c['ours_over_tool']:.2f}x"])  # fmt: skip
            else:
                rows_x.append([r["target"], r["label"], f"{r['p50_ms']:.3f}", "-", c.get("tool") or "-",
                               c["unavailable"]])  # fmt: skip
        sections.append((
            "Cross-check with the engines' own tools",
            "Batch-1 median of the same file, same threads, by the engine's benchmark tool (OpenVINO benchmark_app "
            "with FP32 inference precision, as `toolkit bench` runs it).\n\n"
            + _table(["target", "artifact", "toolkit p50", "tool p50", "tool", "toolkit / tool"], rows_x),
        ))  # fmt: skip
    sweep_rows = []
    for target, arts in (report.get("tuning") or {}).items():
        for entry in arts.values():
            rows_ = entry.get("rows", [])
            last = max((i for i, r in enumerate(rows_) if r["settings"] == entry["best"] and r["status"] == "ok"),
                       default=None)  # fmt: skip
            for i, row in enumerate(rows_):
                chosen = "chosen" if i == last else ""
                sweep_rows.append([
                    target, entry.get("label", entry["file"]), row.get("step", ""), describe_settings(row["settings"]),
                    f"{row['p50_ms']:.3f}" if "p50_ms" in row else "-",
                    row["status"] if row["status"] != "ok" else chosen,
                ])  # fmt: skip
    if sweep_rows:
        sections.append((
            "Session tuning",
            "`toolkit bench --tune`: one setting at a time, candidates timed in interleaved rounds at batch 1 "
            "(p50, ms); the fastest is kept and used by the latency table above. Settings that change the logits "
            "are rejected.\n\n" + _table(["target", "artifact", "step", "settings", "p50", "status"], sweep_rows),
        ))  # fmt: skip
    return sections


def plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name; empty when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, MaxNLocator, ScalarFormatter
    except ImportError:
        return {}
    figures: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        figures[name] = buf.getvalue()

    top1 = _top1_by_artifact(report)
    points = [r for r in report["latency"] if r["artifact"] in top1 and r.get("p90_ms") is not None]
    if points:
        fig, ax = plt.subplots(figsize=(6.4, 4.2 + 0.2 * len(points)))
        # Colour = artifact, marker = target; a legend instead of labels, which collide when points are close.
        colours = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["label"] for r in points))}
        markers = {t: "osD^vP*X"[i % 8] for i, t in enumerate(dict.fromkeys(r["target"] for r in points))}
        for r in points:
            ax.scatter(r["p90_ms"], 100 * top1[r["artifact"]], s=50, c=colours[r["label"]],
                       marker=markers[r["target"]], label=f"{r['label']} [{r['target']}]", alpha=0.85)  # fmt: skip
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
        _log_ms_axis(ax, ScalarFormatter, LogLocator)
        ax.margins(x=0.15, y=0.25)
        ax.set_xlabel("p90 latency at batch 1 (ms, log scale)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("Accuracy vs latency")
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_latency.png")
    dist = [r for r in report["latency"] if r["samples_ms"]]
    if dist:
        fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.45 * len(dist)))
        ax.boxplot([r["samples_ms"] for r in dist], orientation="horizontal", whis=(1, 99), showfliers=False)
        ax.set_yticks(range(1, len(dist) + 1), [f"{r['label']} [{r['target']}]" for r in dist], fontsize=7)
        _log_ms_axis(ax, ScalarFormatter, LogLocator)
        ax.set_xlabel("batch-1 latency (ms, log scale); whiskers p1-p99")
        ax.set_title("Latency distribution")
        save(fig, "latency_distribution.png")
    for key, sens in report.get("sensitivity", {}).items():
        worst = sens["tensors"][:SENSITIVITY_ROWS][::-1]
        if not worst:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.25 * len(worst)))
        ax.barh(range(len(worst)), [t["sqnr_db"] for t in worst], color="tab:red", alpha=0.7)
        ax.set_yticks(range(len(worst)), [t["tensor"] for t in worst], fontsize=6)
        ax.set_xlabel("SQNR (dB, higher is better)")
        ax.set_title(f"Lowest-SQNR activations: {key}")
        ax.grid(axis="x", alpha=0.3)
        save(fig, f"sensitivity_{key}.png")
    hist = report["training"]["history"]
    if hist:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        epochs = list(range(1, len(hist) + 1))  # consecutive across the stages of a distillation run
        ax.plot(epochs, [h.get("train_loss") for h in hist], "o-", label="train loss")
        ax.set_xlabel("epoch (all stages, in order)" if any("stage" in h for h in hist) else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("train loss")
        ax2 = ax.twinx()
        with_val = [(x, h["val_top1"]) for x, h in zip(epochs, hist) if "val_top1" in h]
        ax2.plot([x for x, _ in with_val], [100 * v for _, v in with_val], "s-", color="tab:orange",
                 label="val top-1")  # fmt: skip
        ax2.set_ylabel("val top-1 (%)")
        ax.set_title("Training")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="center right", fontsize=8)
        save(fig, "training_curves.png")
    return figures


def _log_ms_axis(ax: Any, formatter: Any, locator: Any) -> None:
    """Log-scale x axis labelled in plain milliseconds (0.5, 1, 2, 5 ...), not powers of ten."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(formatter())
    ax.xaxis.set_minor_locator(locator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(formatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)


def _md_to_html(text: str) -> str:
    """The small Markdown subset ``sections`` emits (paragraphs, pipe tables, **bold**, `code`) -> HTML."""

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    parts = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("|"):
            head = [c.strip() for c in lines[0].strip("|").split("|")]
            rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{inline(h)}</th>" for h in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
        else:
            parts.append(f"<p>{inline(block)}</p>")
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}td:not(:last-child){white-space:nowrap}
code{background:#f3f3f3;padding:0 .2rem}img{max-width:100%;display:block;margin:1rem 0}"""


def render(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md (+ report_files/*.png) and report.html into ``out_dir``."""
    secs = sections(report)
    figures = plots(report)
    title = f"Report: {report['run']['name']}"
    skipped = "" if figures else "\n\n_Plots skipped: install matplotlib (extra `report`)._"
    md = [f"# {title}", *(f"## {t}\n\n{b}" for t, b in secs)]
    md += [f"![{n}](report_files/{n})" for n in figures]
    for name, png in figures.items():
        write_bytes(out_dir / "report_files" / name, png)
    write_text(out_dir / "report.md", "\n\n".join(md) + skipped + "\n")
    imgs = "".join(
        f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(png).decode()}">' for n, png in figures.items()
    )
    body = "".join(f"<h2>{html.escape(t)}</h2>\n{_md_to_html(b)}\n" for t, b in secs)
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}<h2>Plots</h2>{imgs or skipped}"
        "</body></html>\n"
    )
    write_text(out_dir / "report.html", page)
    write_json(out_dir / "report.json", report)
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
