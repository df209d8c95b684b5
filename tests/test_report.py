"""RUN/report.html: one self-contained page with the run's settings, accuracy, figures,
loci and the commands that reproduce it; rendered by a real browser where one is installed."""

import re
import shutil
import subprocess

import pytest
from helpers import run_cli


@pytest.fixture(scope="module")
def reported(run, sim_store, tmp_path_factory):
    """The shared trained run, copied, with its baselines and GWAS, reduced."""
    d = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(run[0], d)
    run_cli("baseline", sim_store[0], "--run", d)
    run_cli("gwas", sim_store[0], "--run", d, "--no-progress")
    run_cli("reduce", "--run", d)
    return d


def test_the_report_is_one_self_contained_file_with_every_part(reported):
    page = (reported / "report.html").read_text()
    for heading in ("Data sets", "Accuracy", "Figures", "Top loci", "Settings and versions", "Reproduce", "Files"):
        assert f"<h2>{heading}</h2>" in page
    for figure in ("fold_pcc.png", "observed_vs_predicted.png", "avg_saliency_across_folds.png",
                   "attribution_vs_gwas.png"):
        assert re.search(rf"<img alt='{re.escape(figure)}' src='data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}'>",
                         page), figure
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing outside the file
    assert "<script" not in page
    assert "fold_pcc_summary.csv" in page and ">ensemble<" in page and ">gblup_dosage<" in page
    assert ">GWAS_P<" in page  # the loci carry their GWAS p
    assert f"hpcsnp cv {sim_store_path(reported)} --run {reported}" in page
    assert f"hpcsnp reduce --run {reported}" in page and "tensorflow" in page.lower()


def sim_store_path(run_dir) -> str:
    import json

    return json.loads((run_dir / "sim" / "dataset.json").read_text())["store"]


def test_a_browser_renders_the_report(reported, tmp_path):
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1280,2400",
                           (reported / "report.html").resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    extrema = image.getextrema()
    assert extrema[0] < 100 and extrema[1] > 200  # text and figures on a white page, not a blank one


def test_the_settings_give_dropout1_its_rate_where_it_follows_dropout(tmp_path):
    """dropout1 recorded as None (--publication, or a run from before the setting) means
    --dropout's rate there too: the report says that rate, not "None"."""
    from hpcsnp.config import Config
    from hpcsnp.run.html import _settings
    from hpcsnp.rundir import RunDir

    run = RunDir(tmp_path)
    Config.publication().save(run.config_path)
    assert re.search(r"dropout1</td>\s*<td>0.75 \(as dropout\)", _settings(run, [])), _settings(run, [])[:2000]
    Config().save(run.config_path)
    assert re.search(r"dropout1</td>\s*<td>0.0</td>", _settings(run, []))
