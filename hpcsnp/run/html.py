"""RUN/report.html: one self-contained page a breeder can open offline or send to a
colleague: what was run and with what, how accurate each model was beside the baselines,
the figures, the top loci with their GWAS p-values, the files of the run and the commands
that reproduce it.  Figures are embedded (base64 PNG), there is no script and no link
outside the file; everything is read from the run directory after ``reduce`` wrote it.
"""

from __future__ import annotations

import base64
import html
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from hpcsnp import __version__
from hpcsnp.atomic import atomic_write_text
from hpcsnp.linear.gwas import gwas_table_path
from hpcsnp.rundir import METRICS_JSON, FoldMetrics, RunDir

REPORT_HTML = "report.html"
# run-level files, what each holds, in the order the report shows them
FIGURES = {
    "fold_pcc.png": "Test PCC of every model in every fold (bar: the mean; dashed: the best baseline's mean).",
    "observed_vs_predicted.png": "Observed against predicted for every test line; slope 1 means predictions "
                                 "on the phenotype's scale.",
    "avg_saliency_across_folds.png": "Mean saliency along the genome, the lead SNPs of the top loci labelled.",
    "attribution_vs_gwas.png": "The mixed-model GWAS above the mean saliency on the same genome axis.",
}
TABLES = {
    "fold_pcc_summary.csv": "Accuracy per data set and model over the folds (within-family columns where the "
                            "store has families).",
    "paired_comparison.csv": "Each model minus the better GBLUP (and the best RKHS where that is better), "
                             "paired by fold.",
    "ensemble_weights.csv": "The headline's weights per fold, chosen on validation predictions of the lines "
                            "outside the fold.",
    "top_loci.tsv": "The top SNPs of each ranking grouped into loci (r^2 and distance), with GWAS agreement "
                    "(tab-separated, PLINK 2's column names).",
    "top_saliency_snps.csv": "The top SNPs by the lead ranking.",
}
CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#eef}img{max-width:100%;border:1px solid #ddd}pre{background:#f6f6f6;padding:0.6em;
overflow-x:auto}.note{color:#555;font-size:0.9em}.wide{overflow-x:auto}"""


def write_report(run_dir, top_loci: int = 20) -> Path:
    """Write RUN/report.html from the run's files; returns its path."""
    run = RunDir(run_dir)
    datasets = run.datasets()
    parts = [f"<h1>hpcsnp run {_e(run.path.name)}</h1>",
             f"<p class=note>{_e(str(run.path.resolve()))}; written "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by hpcsnp {__version__}</p>",
             _section("Data sets", _datasets_table(datasets)),
             _section("Accuracy", _tables(run, ("fold_pcc_summary.csv", "paired_comparison.csv",
                                                "ensemble_weights.csv"))),
             _section("Figures", _figures(run)),
             _section("Top loci", _loci(run, top_loci) + _tables(run, ("top_saliency_snps.csv",))),
             _section("Settings and versions", _settings(run, datasets)),
             _section("Reproduce", _commands(run, datasets)),
             _section("Files", _files(run))]
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>hpcsnp run {_e(run.path.name)}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = run.output(REPORT_HTML)
    atomic_write_text(path, page)
    return path


def _e(text) -> str:
    return html.escape(str(text))


def _section(title: str, body: str) -> str:
    return f"<h2>{_e(title)}</h2>{body}" if body else ""


def _frame(frame: pd.DataFrame) -> str:
    return f"<div class=wide>{frame.to_html(index=False, float_format=lambda v: f'{v:.4g}', na_rep='', border=0)}</div>"


def _tables(run: RunDir, names) -> str:
    out = []
    for name in names:
        path = run.output(name)
        if path.exists():
            out.append(f"<h3>{_e(name)}</h3><p class=note>{_e(TABLES[name])}</p>{_frame(pd.read_csv(path))}")
    return "".join(out)


def _figures(run: RunDir) -> str:
    out = []
    for name, caption in FIGURES.items():
        path = run.output(name)
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption class=note>{_e(name)}: {_e(caption)}</figcaption></figure>")
    return "".join(out)


def _loci(run: RunDir, most: int) -> str:
    """The lead ranking's top loci (or the saliency's), with each lead SNP's GWAS p where a
    GWAS was run (top_loci.tsv's GWAS_P)."""
    from hpcsnp.run.reduce import LOCI_TSV, read_plink_style

    path = run.output(LOCI_TSV)
    if not path.exists():
        return ""
    loci = read_plink_style(path)
    lead = "combined" if "combined" in set(loci["METHOD"]) else "saliency"
    loci = loci[loci["METHOD"] == lead].head(most)
    return f"<p class=note>Ranking: {_e(lead)}; every ranking's loci are in {LOCI_TSV}.</p>{_frame(loci)}"


def _datasets_table(datasets) -> str:
    rows = [{"dataset": d.dataset, "store": d.store, "lines": d.n_samples, "SNPs": d.n_variants,
             "folds": d.n_folds, "families": "yes" if d.groups else "no",
             "trait": f"{d.trait} ({d.pheno})" if d.trait else "the store's",
             "covariates": (f"{', '.join(d.covar_names) if d.covar_names else 'all columns'} of {d.covar}"
                            if d.covar else "none")} for d in datasets]
    return _frame(pd.DataFrame(rows)) if rows else ""


def _settings(run: RunDir, datasets) -> str:
    cfg = run.config() or {}
    shown = {k: f"{cfg.get('dropout')} (as dropout)" if k == "dropout1" and v is None else str(v)
             for k, v in cfg.items()}  # dropout1 None: --dropout's rate there too, as published
    table = pd.DataFrame({"setting": list(shown), "value": list(shown.values())})
    versions = {}
    if datasets:
        metrics = run.fold(datasets[0].dataset, 1) / METRICS_JSON
        if metrics.exists():
            versions = FoldMetrics.read(metrics).raw.get("versions", {})
    vt = pd.DataFrame({"package": list(versions), "version": list(versions.values())})
    return (_frame(table) if len(table) else "") + (f"<h3>Versions (fold 1)</h3>{_frame(vt)}" if len(vt) else "")


def _commands(run: RunDir, datasets) -> str:
    q = shlex.quote
    config = f" --config {q(str(run.config_path))}" if run.config_path.exists() else ""
    stores = " ".join(q(d.store) for d in datasets)
    names = "".join(f" --dataset {q(d.dataset)}" for d in datasets)
    lines = [f"hpcsnp cv {stores} --run {q(str(run.path))}{names}{config}"]
    lines += [f"hpcsnp gwas {q(d.store)} --run {q(str(run.path))} --dataset {q(d.dataset)}" for d in datasets
              if gwas_table_path(run.dataset_dir(d.dataset)).exists()]
    lines.append(f"hpcsnp reduce --run {q(str(run.path))}")
    return ("<p class=note>From the stores the run was trained on (cv resumes and skips finished folds; "
            "add --force to redo them):</p><pre>" + _e("\n".join(lines)) + "</pre>")


def _files(run: RunDir) -> str:
    rows = [{"file": p.name, "bytes": p.stat().st_size} for p in sorted(run.path.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name != REPORT_HTML]
    rows += [{"file": f"{d.name}/", "bytes": ""} for d in sorted(run.path.iterdir()) if d.is_dir()]
    return _frame(pd.DataFrame(rows)) if rows else ""
