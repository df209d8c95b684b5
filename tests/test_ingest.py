"""Ingest: a good file round-trips exactly; every bad-input case gets a located error."""

import gzip
import subprocess
import sys

import numpy as np
import pytest
from helpers import SMALL_REAL, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcsnp.errors import InputError, ParseError, StoreError
from hpcsnp.io.text import ingest_tsv
from hpcsnp.store import open_store

HEADER = "fold\tphenotype\tGm01_100\tGm01_200\tGm02_50\n"
ROWS = ["1\t10.5\t0\t1\t2\n", "2\t11.0\t2\t-1\t0\n", "3\t9.25\t1\t1\t-1\n", "1\t12\t0\t2\t2\n"]


def good(rows=ROWS, header=HEADER):
    return header + "".join(rows)


def test_roundtrip_values_names_and_positions(tsv, tmp_path):
    rep = ingest_tsv(tsv(good()), tmp_path / "s.zarr", progress=False)
    s = open_store(tmp_path / "s.zarr")
    assert s.genotypes.dtype == np.int8
    assert s.genotypes[:].tolist() == [[0, 1, 2], [2, -1, 0], [1, 1, -1], [0, 2, 2]]
    assert s.phenotype.tolist() == [10.5, 11.0, 9.25, 12.0]
    assert s.fold.tolist() == [1, 2, 3, 1]
    assert list(s.variant_id) == ["Gm01_100", "Gm01_200", "Gm02_50"]
    assert list(s.contig) == ["Gm01", "Gm01", "Gm02"] and s.position.tolist() == [100, 200, 50]
    assert list(s.sample_id) == ["1", "2", "3", "4"]
    assert rep.n_folds == 3 and rep.fold_sizes == {1: 2, 2: 1, 3: 1}
    assert rep.missing_rate == pytest.approx(2 / 12)
    assert len(s.attrs["source"]["sha256"]) == 64 and s.attrs["hpcsnp_format_version"] == 2


def test_unparsed_names_are_left_empty_not_guessed(tsv, tmp_path):
    ingest_tsv(tsv("fold\tphenotype\trs123\tGm01_5\n1\t1\t0\t1\n2\t2\t1\t0\n3\t3\t2\t2\n"),
               tmp_path / "s.zarr", progress=False)
    s = open_store(tmp_path / "s.zarr")
    assert list(s.contig) == ["", "Gm01"] and s.position.tolist() == [-1, 5]


def test_gzip_bom_crlf_and_id_column(tsv, tmp_path):
    lines = (("\ufeffstrain\t" + HEADER).splitlines()
             + [f"S{i}\t{r.strip()}" for i, r in enumerate(ROWS)])
    text = "\r\n".join(lines) + "\r\n"
    ingest_tsv(tsv(text, name="x.txt", gz=True), tmp_path / "s.zarr", progress=False)
    s = open_store(tmp_path / "s.zarr")
    assert list(s.sample_id) == ["S0", "S1", "S2", "S3"]
    assert list(s.variant_id) == ["Gm01_100", "Gm01_200", "Gm02_50"]
    assert s.genotypes[:].tolist()[1] == [2, -1, 0]


def test_quotes_and_spaces_around_cells_are_read_as_r_writes_them(tsv, tmp_path):
    """write.table(quote = TRUE) quotes the header and the ids; spaces around cells are not
    part of names or values: the store is the plain file's."""
    plain = "id\t" + HEADER + "".join(f"S {i}\t{r}" for i, r in enumerate(ROWS))
    quoted = "\t".join(f'"{c}"' for c in ("id\t" + HEADER).rstrip("\n").split("\t")) + "\n" + "".join(
        f'"S {i}"\t' + "\t".join(f' "{c}" ' if k < 2 else c for k, c in enumerate(r.rstrip("\n").split("\t")))
        + "\n" for i, r in enumerate(ROWS))
    ingest_tsv(tsv(plain), tmp_path / "plain.zarr", progress=False)
    ingest_tsv(tsv(quoted), tmp_path / "quoted.zarr", progress=False)
    a, b = open_store(tmp_path / "plain.zarr"), open_store(tmp_path / "quoted.zarr")
    assert list(b.sample_id) == ["S 0", "S 1", "S 2", "S 3"] == list(a.sample_id)
    assert list(b.variant_id) == list(a.variant_id) == ["Gm01_100", "Gm01_200", "Gm02_50"]
    assert b.genotypes[:].tolist() == a.genotypes[:].tolist() and b.phenotype.tolist() == a.phenotype.tolist()
    assert b.fold.tolist() == a.fold.tolist()


def test_na_tokens_are_missing_and_counted_unless_strict(tsv, tmp_path):
    rows = ["1\t10\tNA\t1\t2\n", "2\t11\t.\tnan\t0\n", "3\t9\t1.0\t1\t-1\n"]
    rep = ingest_tsv(tsv(good(rows)), tmp_path / "s.zarr", progress=False)
    assert rep.na_cells == 3
    assert open_store(tmp_path / "s.zarr").genotypes[:].tolist() == [[-1, 1, 2], [-1, -1, 0], [1, 1, -1]]
    with pytest.raises(ParseError, match=r":2: column 3 \(Gm01_100\)"):
        ingest_tsv(tsv(good(rows)), tmp_path / "t.zarr", progress=False, strict=True)


BAD = {
    "ragged row": (good(ROWS[:2] + ["3\t9\t1\t1\n"] + ROWS[3:]), r":4: row has 4 columns, header has 5"),
    "empty genotype cell": (good(ROWS[:1] + ["2\t11\t2\t\t0\n"] + ROWS[2:]), r":3: column 4 \(Gm01_200\): genotype an empty cell"),  # noqa: E501
    "code 3": (good(ROWS[:1] + ["2\t11\t2\t3\t0\n"] + ROWS[2:]), r":3: column 4 \(Gm01_200\): genotype '3'"),
    "code 9": (good(ROWS[:2] + ["3\t9\t1\t1\t9\n"] + ROWS[3:]), r":4: column 5 \(Gm02_50\): genotype '9'"),
    "dosage 0.5": (good(ROWS[:1] + ["2\t11\t0.5\t1\t0\n"] + ROWS[2:]), r":3: column 3 \(Gm01_100\)"),
    "text phenotype": (good(ROWS[:1] + ["2\ttall\t2\t1\t0\n"] + ROWS[2:]), r":3: column 2 \(phenotype\): phenotype 'tall' is not a number"),  # noqa: E501
    "missing phenotype": (good(ROWS[:1] + ["2\tNA\t2\t1\t0\n"] + ROWS[2:]), r":3: column 2 \(phenotype\): phenotype is missing"),  # noqa: E501
    "infinite phenotype": (good(ROWS[:1] + ["2\tinf\t2\t1\t0\n"] + ROWS[2:]), r":3: column 2 .*not finite"),
    "duplicate SNP": (HEADER.replace("Gm02_50", "Gm01_100") + "".join(ROWS), r":1: column 5 \(Gm01_100\): duplicate SNP name 'Gm01_100' \(also column 3\)"),  # noqa: E501
    "fold 0": (good(ROWS[:1] + ["0\t11\t2\t1\t0\n"] + ROWS[2:]), r":3: column 1 \(fold\): fold 0 is outside 1..K"),
    "fold 11": (good(ROWS[:1] + ["11\t11\t2\t1\t0\n"] + ROWS[2:]), r":3: column 1 \(fold\): fold 11 is outside"),
    "fold not integer": (good(ROWS[:1] + ["x\t11\t2\t1\t0\n"] + ROWS[2:]), r":3: column 1 \(fold\): fold 'x'"),
    "K below 3": (good([r.replace("3\t", "2\t", 1) if r.startswith("3") else r for r in ROWS]), r"folds go up to 2"),
    "fold with no samples": (good(ROWS + ["5\t1\t0\t0\t0\n"]), r"fold\(s\) 4 have no samples"),
    "header only": (HEADER, r":1: no data rows after the header"),
    "empty file": ("", r":1: file is empty"),
    "comma separated": ("fold,phenotype,a\n1,2,0\n", r"looks comma-separated"),
    "blank line inside": (good(ROWS[:2] + ["\n"] + ROWS[2:]), r":4: blank line inside the data"),
    "duplicate sample id": ("id\t" + HEADER + "".join(f"S\t{r}" for r in ROWS), r"sample id 'S' occurs more than once"),
    "CR line ends": (good().replace("\n", "\r"), r":1: the lines end with a bare carriage return"),
    "trailing tab": (HEADER.replace("\n", "\t\n") + "".join(r.replace("\n", "\t\n") for r in ROWS),
                     r":1: column 6: empty SNP name in header \(the header ends with a tab\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_located_error(case, tsv, tmp_path):
    text, pattern = BAD[case]
    path = tsv(text)
    with pytest.raises(InputError, match=pattern) as e:
        ingest_tsv(path, tmp_path / "s.zarr", progress=False)
    assert str(path) in str(e.value)
    assert not (tmp_path / "s.zarr").exists()
    assert not list(tmp_path.glob("s.zarr.tmp-*")), "a failed ingest leaves no temporary store"


def test_bad_input_through_cli_is_one_line_exit_2(tsv, tmp_path):
    path = tsv(BAD["code 3"][0])
    proc = run_cli("ingest", path, "-o", tmp_path / "s.zarr", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{path}:3: column 4 (Gm01_200)" in proc.stderr
    verbose = run_cli("-v", "ingest", path, "-o", tmp_path / "s.zarr", check=False)
    assert "Traceback" in verbose.stderr


def test_missing_phenotype_rows_dropped_on_request(tsv, tmp_path):
    path = tsv(good(ROWS + ["2\tNA\t1\t1\t1\n"]))
    rep = ingest_tsv(path, tmp_path / "s.zarr", progress=False, drop_missing_phenotype=True)
    assert rep.dropped_missing_phenotype == 1 and rep.n_samples == 4


def test_constant_snp_warns_and_is_kept(tsv, tmp_path, caplog):
    rows = ["1\t1\t0\t1\t2\n", "2\t2\t0\t2\t0\n", "3\t3\t0\t0\t1\n"]
    rep = ingest_tsv(tsv(good(rows)), tmp_path / "s.zarr", progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rep.constant_snps == ["Gm01_100"] and rep.n_variants == 3
    assert "Gm01_100" in warnings[0]


def test_existing_store_needs_force(tsv, tmp_path):
    path = tsv(good())
    ingest_tsv(path, tmp_path / "s.zarr", progress=False)
    with pytest.raises(InputError, match="already exists; use --force"):
        ingest_tsv(path, tmp_path / "s.zarr", progress=False)
    ingest_tsv(path, tmp_path / "s.zarr", progress=False, force=True)


def test_an_output_that_cannot_be_written_is_refused_before_reading(tsv, tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    proc = run_cli("ingest", tsv(good()), "-o", tmp_path / "afile" / "s.zarr", check=False)
    assert proc.returncode == 2 and "afile is a file, not a directory" in proc.stderr, proc.stderr
    proc = run_cli("simulate", tmp_path / "nodir" / "s.tsv", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "internal error" not in proc.stderr


def test_cli_summary_on_real_sample(tmp_path):
    proc = run_cli("ingest", SMALL_REAL, "-o", tmp_path / "small.zarr")
    assert "samples      600" in proc.stdout and "SNPs         1,000" in proc.stdout
    assert "K=10" in proc.stdout and "missing" in proc.stdout
    assert "constant" in proc.stderr  # the sample has constant columns; warned on stderr


def test_killed_ingest_leaves_nothing_that_opens(tmp_path):
    """SIGKILL mid-ingest: no store at the final name, and the temporary one is refused."""
    from hpcsnp.io.simulate import simulate

    src = tmp_path / "big.tsv"
    simulate(src, samples=6000, snps=2000, folds=5, seed=3)
    out = tmp_path / "big.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "hpcsnp", "ingest", str(src), "-o", str(out),
                             "--chunk-rows", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("big.zarr.tmp-*/call_dosage/c")):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not out.exists()
    tmps = list(tmp_path.glob("big.zarr.tmp-*"))
    assert tmps, "the kill came too late to test anything"
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmps[0])


def test_open_store_checks_format_version(tsv, tmp_path):
    import zarr

    ingest_tsv(tsv(good()), tmp_path / "s.zarr", progress=False)
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs["hpcsnp_format_version"] = 99
    with pytest.raises(StoreError, match="format version 99"):
        open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "nope.zarr")


cells = st.sampled_from(["0", "1", "2", "-1", "NA", "."])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(cells, min_size=4, max_size=4), min_size=3, max_size=12), st.booleans())
def test_parser_matches_a_plain_reading(tmp_path_factory, rows, gz):
    """Property: whatever mix of codes and NA tokens, the store holds exactly what a
    cell-by-cell reading says (fast and slow paths agree)."""
    d = tmp_path_factory.mktemp("h")
    folds = [(i % 3) + 1 for i in range(len(rows))]
    text = "fold\tphenotype\ta\tb\tc\td\n" + "".join(
        f"{f}\t{i}.5\t" + "\t".join(r) + "\n" for i, (f, r) in enumerate(zip(folds, rows)))
    p = d / ("x.tsv.gz" if gz else "x.tsv")
    p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    ingest_tsv(p, d / "s.zarr", progress=False)
    expect = [[-1 if c in ("NA", ".") else int(c) for c in r] for r in rows]
    assert open_store(d / "s.zarr").genotypes[:].tolist() == expect
