"""The pure pieces every stage relies on: the run directory's names, the model registry,
the genotype helpers, new-lines alignment and the ensemble's weights.  numpy and pandas
only: part of the fast tier."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from hpcsnp.errors import InputError
from hpcsnp.genotypes import ONE_HOT_TABLE, mean_dosage
from hpcsnp.io.newlines import VariantMeta, align
from hpcsnp.models import BASELINE_MODELS, CNN, KINDS, LINEAR_MODELS, baseline_kind, model_name
from hpcsnp.run.ensemble import ensemble_folds, simplex_weights
from hpcsnp.rundir import METRICS_JSON, PREDICTIONS_CSV, VAL_PREDICTIONS_CSV, DatasetRecord, RunDir


def test_every_model_name_resolves_to_the_directory_its_fitter_writes(tmp_path):
    run = RunDir(tmp_path)
    assert [baseline_kind(model_name(k)) for k in KINDS] == list(KINDS)
    assert set(LINEAR_MODELS) < set(BASELINE_MODELS) and CNN not in BASELINE_MODELS
    for kind in KINDS:
        assert run.model_fold("d", model_name(kind), 3) == run.baseline("d", kind, 3)
    assert run.model_fold("d", CNN, 3) == run.fold("d", 3)


def test_the_default_attributions_give_the_combined_ranking():
    """Every fold computes the saliency and the marginal association by default, so reduce
    ranks SNPs by their geometric mean (config.COMBINED); --attribution saliency opts out."""
    from hpcsnp.config import COMBINED_PARTS, Config

    assert set(COMBINED_PARTS) <= set(Config().attribution_methods())
    assert Config(attribution="saliency").attribution_methods() == ["saliency"]


def test_mean_dosage_is_the_mean_over_called_genotypes_in_any_batching():
    rng = np.random.default_rng(0)
    g = rng.integers(-1, 3, size=(57, 9)).astype(np.int8)
    g[:, 4] = -1  # a SNP with no call
    called = np.where(g >= 0, g, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nan_to_num(np.nanmean(called, axis=0), nan=0.0)
    np.testing.assert_allclose(mean_dosage([g], 9), want)
    np.testing.assert_allclose(mean_dosage([g[:10], g[10:]], 9, block_bytes=18), want)  # blocks of 2 rows
    centred = mean_dosage([g], 9, centred=True)
    np.testing.assert_allclose(centred[want > 0], want[want > 0] - 1)
    assert centred[4] == 0.0 and want[4] == 0.0
    assert ONE_HOT_TABLE.sum(axis=1).tolist() == [1, 1, 1, 1]


def test_alignment_matches_by_name_then_position_and_flips_swapped_alleles():
    train = VariantMeta.from_lists(["a", "b", "c", "d"], ["1", "1", "2", "2"], [10, 20, 30, 40],
                                   [("A", "G"), ("C", "T"), ("A", "G"), ("A", "C")])
    new = VariantMeta.from_lists(["c", "rs9", "a", "d", "extra"], ["2", "chr01", "1", "2", "3"],
                                 [30, 20, 10, 40, 5],
                                 [("G", "A"), ("C", "T"), ("A", "G"), ("A", "T"), ("A", "G")])
    a = align(train, new)
    assert a.index.tolist() == [2, 1, 0, -1]  # d: other alleles, read as missing
    assert a.flip.tolist() == [False, False, True, False]
    assert a.counts["matched_by_position"] == 1 and a.counts["allele_mismatch"] == 1
    assert a.counts["extra"] == 1  # the column "extra"; d's column is taken, then refused
    codes = np.array([[0, 1, 2, 2, 0], [2, -1, 0, 1, 1]], np.int8)  # over the new file's columns
    assert a.apply(codes).tolist() == [[2, 1, 2, -1], [0, -1, 0, -1]]  # c flipped: 0 -> 2, 2 -> 0


def _fold_files(d, ids, truth, val_ids, val_truth, pred, val_pred, fold):
    d.mkdir(parents=True)
    pd.DataFrame({"sample_id": ids, "fold": fold, "truth": truth, "prediction": pred}).to_csv(d / PREDICTIONS_CSV,
                                                                                              index=False)
    pd.DataFrame({"sample_id": val_ids, "fold": fold + 1, "truth": val_truth,
                  "prediction": val_pred}).to_csv(d / VAL_PREDICTIONS_CSV, index=False)
    (d / METRICS_JSON).write_text(json.dumps({"pcc": 0.0, "mse": 1.0, "mae": 1.0, "seconds": 1.0, "n_test": len(ids)}))


@pytest.mark.parametrize("val_best", ["cnn", "gblup_dosage"])
def test_the_ensemble_weights_never_score_the_test_folds_lines(tmp_path, val_best):
    """K = 3 folds of 40 lines.  Test fold 1's weights are chosen on the validation
    predictions of folds 1 and 2 (validating on folds 2 and 3), where ``val_best`` is exact
    and the other model noise; fold 3 validates on fold 1's lines, and there and on fold
    1's test predictions it is the other way round: the weights follow the lines outside
    the test fold, never its phenotypes."""
    rng = np.random.default_rng(1)
    run = RunDir(tmp_path)
    ids = {f: [f"f{f}_{i}" for i in range(40)] for f in (1, 2, 3)}
    y = {f: rng.normal(size=40) for f in (1, 2, 3)}

    def pred(exact: bool, f: int):
        return y[f] if exact else rng.normal(size=40)
    for m in ("cnn", "gblup_dosage"):
        best = m == val_best
        for f in (1, 2, 3):
            v = f % 3 + 1  # its validation fold; fold 1's lines favour the other model
            _fold_files(run.model_fold("d", m, f), ids[f], y[f], ids[v], y[v], pred(not best, f),
                        pred(best if v != 1 else not best, v), f)
    rows = ensemble_folds(tmp_path, DatasetRecord("d", "s.zarr", None, 3, 120, 10), ["gblup_dosage"])
    row, weights, preds = rows[0]
    assert weights[f"w_{val_best}"] == 1.0 and weights["val_mse"] == pytest.approx(0.0, abs=1e-12)
    assert weights["n_val"] == 80  # folds 2 and 3's lines, once each
    assert row["pcc"] < 0.5  # the test fold's exact model was not chosen
    assert preds["sample_id"].tolist() == ids[1]
    w = simplex_weights(3)
    assert np.allclose(w.sum(axis=1), 1) and len(w) == 231 and (w >= 0).all()


def test_the_data_set_record_round_trips_and_reads_older_records(tmp_path):
    rec = DatasetRecord("d", "/x/s.zarr", "abc", 5, 100, 40, {"path": "s.tsv"}, True)
    path = tmp_path / "dataset.json"
    path.write_text(rec.to_json())
    assert DatasetRecord.read(path) == rec
    assert list(json.loads(path.read_text())) == ["dataset", "store", "store_id", "n_folds", "n_samples",
                                                  "n_variants", "store_source", "groups", "trait", "pheno", "covar",
                                                  "covar_names"]
    traited = DatasetRecord("s.yield", "/x/s.zarr", "abc+yield@12", 5, 90, 40, trait="yield", pheno="/x/t.tsv")
    path.write_text(traited.to_json())
    assert DatasetRecord.read(path) == traited
    assert traited.store_args == "/x/s.zarr --pheno /x/t.tsv --trait yield" and rec.store_args == "/x/s.zarr"
    covaried = DatasetRecord("s", "/x/s.zarr", "abc+covariates@34", 5, 90, 40, covar="/x/c.tsv", covar_names=["env"])
    assert covaried.store_args == "/x/s.zarr --covar /x/c.tsv --covar-name env" and covaried.default_name
    assert traited.default_name and not DatasetRecord("other", "/x/s.zarr", None, 5, 90, 40, trait="y").default_name
    older = {"dataset": "d", "store": "/x/s.zarr", "n_folds": 5, "n_samples": 100, "n_variants": 40,
             "written_by": "a later version"}  # no store id yet, a key this version does not know
    path.write_text(json.dumps(older))
    assert DatasetRecord.read(path) == DatasetRecord("d", "/x/s.zarr", None, 5, 100, 40)
    path.write_text(json.dumps({"dataset": "d"}))
    with pytest.raises(InputError, match="not a data-set record"):
        DatasetRecord.read(path)


def test_fold_metrics_are_read_by_name_and_a_damaged_file_is_named(tmp_path):
    from hpcsnp.rundir import FoldMetrics

    path = tmp_path / METRICS_JSON
    path.write_text(json.dumps({"pcc": 0.5, "mse": 1.0, "mae": 0.8, "seconds": 3.0, "n_test": 20, "epochs": 7,
                                "store_id": "abc", "a_key_of_a_later_version": 1}))
    m = FoldMetrics.read(path)
    assert (m.pcc, m.n_test, m.epochs, m.store_id, m.theta) == (0.5, 20, 7, "abc", None)
    assert m.raw["a_key_of_a_later_version"] == 1
    path.write_text(json.dumps({"pcc": 0.5}))
    with pytest.raises(InputError, match="not a fold's metrics"):
        FoldMetrics.read(path)
