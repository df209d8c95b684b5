"""Nothing lost when a fold dies: resume gives the same result; best weights are kept."""

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import run_cli

ARGS = ["--fold", "1", "--epochs", "30", "--patience", "40", "--batch-size", "16", "--threads", "1",
        "--dropout", "0.5", "--lr", "0.01", "--lr-decay-patience", "1", "--lr-decay-steps", "0",
        "--models-per-fold", "1"]


def _train_until(store, args, run, state, epoch):
    """Start `hpcsnp train` in another process; return it once the checkpoint ``state``
    records ``epoch`` (or it ended, or 120 s passed)."""
    proc = subprocess.Popen([sys.executable, "-m", "hpcsnp", "train", str(store), *args, "--run", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            break
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("extra", [["--weight-average", "0"], []], ids=["own-weights", "averaged"])
def test_killed_fold_resumes_to_the_identical_result(sim_store, tmp_path, extra):
    """'Same' on CPU here: with the same thread count, the resumed fold's predictions,
    metrics and saliency are bitwise identical to an uninterrupted run's (data order is
    seeded per epoch; weights, Adam state, the dropout RNG states and the weights' averages
    are checkpointed)."""
    store, _ = sim_store
    args = [*ARGS, *extra]
    run_cli("train", store, *args, "--run", tmp_path / "whole")
    state = tmp_path / "killed" / "sim" / "fold_1.partial" / "state.json"
    proc = _train_until(store, args, tmp_path / "killed", state, 3)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-training, still holding its lock: epochs take ~0.1 s
    second = run_cli("train", store, *args, "--run", tmp_path / "killed", check=False)
    assert second.returncode == 1 and "is being trained by pid" in second.stderr
    from hpcsnp.errors import IncompleteRunError
    from hpcsnp.run.reduce import check_complete, datasets_in

    with pytest.raises(IncompleteRunError, match=rf"sim fold 1 \(running now: pid {proc.pid} on "):
        check_complete(tmp_path / "killed", datasets_in(tmp_path / "killed"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = json.loads(state.read_text())["epoch"]
    assert 3 <= epoch_at_kill < 30, "the kill must land mid-training"
    assert not (tmp_path / "killed" / "sim" / "fold_1").exists()
    resumed = run_cli("train", store, *args, "--run", tmp_path / "killed")
    assert f"resuming after epoch {epoch_at_kill}" in resumed.stderr
    assert "epoch    1 " not in resumed.stderr  # did not start over
    a, b = (tmp_path / d / "sim" / "fold_1" for d in ("whole", "killed"))
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["pcc"] == mb["pcc"] and ma["history"] == mb["history"]
    assert len({h["lr"] for h in ma["history"]}) > 1, "the plateau decay must have fired to be tested"
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(a / "saliency.zarr"))[:],
                                  zarr.open_array(str(b / "saliency.zarr"))[:])


@pytest.mark.parametrize("average", [0.0, 0.9])
def test_best_epoch_weights_are_the_ones_kept(sim_store, tmp_path, average):
    """Without the refit, the saved model is the best validation epoch's, not the last one's;
    with weight averaging, the best epoch's averaged weights, which early stopping validated."""
    import keras

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config
    from hpcsnp.folds import fold_split
    from hpcsnp.store import open_store

    cfg = Config(max_epochs=12, patience=12, batch_size=8, learning_rate=0.02, dropout=0.5, refit=False,
                 n_models=1, weight_average=average)
    r = train_fold(sim_store[0], 1, tmp_path, cfg)
    m = r.metrics
    maes = [h["val_mae"] for h in m["history"]]
    assert m["best_epoch"] == int(np.argmin(maes)) + 1
    assert m["best_epoch"] < m["epochs"], "this setting should overfit before the last epoch"
    store = open_store(sim_store[0])
    val = fold_split(store.fold, 3, 1).val
    model = keras.models.load_model(r.path / "model.keras")
    pred = model(one_hot(store.genotypes[:][val]), training=False).numpy()[:, 0]
    mae = np.mean(np.abs(pred * m["target_sd"] + m["target_mean"] - store.phenotype[val]))
    assert mae == pytest.approx(m["best_val_mae"], rel=1e-5)
    assert mae != pytest.approx(maes[-1], rel=1e-6)
    if average:  # the same training steps as without averaging; other weights validated
        own = train_fold(sim_store[0], 1, tmp_path / "own", cfg.replace(weight_average=0.0)).metrics["history"]
        assert [h["loss"] for h in own] == [h["loss"] for h in m["history"]]
        assert all(h["val_mae"] != pytest.approx(a, rel=1e-4) for h, a in zip(own, maes))


def test_sigterm_says_what_happens_and_a_rerun_resumes(sim_store, tmp_path):
    store, _ = sim_store
    state = tmp_path / "sim" / "fold_1.partial" / "state.json"
    args = [*ARGS, "--epochs", "300", "--patience", "400"]  # the signal lands mid-training however late it comes
    proc = subprocess.Popen([sys.executable, "-m", "hpcsnp", "train", str(store), *args, "--run", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated by signal 15" in err and "resumes" in err and "Traceback" not in err
    again = run_cli("train", store, *args, "--run", tmp_path)
    assert "resuming after epoch" in again.stderr


def test_sigterm_while_tensorflow_binds_a_steps_arguments_still_exits_143(capsys):
    """The handler raises where the main thread happens to be; TensorFlow re-raises any
    Exception raised while it binds a compiled function's arguments as a TypeError, which
    would make a preempted fold exit 1 with an internal error instead of 143."""
    import tensorflow as tf

    from hpcsnp.cli import _handle_errors, _on_sigterm

    step = tf.function(lambda x: x + 1)
    step(tf.constant(1.0))  # traced: a second call only binds its arguments and runs
    fired = []

    def signal_inside_binding(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "bind_with_defaults" and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGTERM)

    @_handle_errors
    def command():
        _on_sigterm("while a step's arguments were bound")
        sys.setprofile(signal_inside_binding)
        try:
            step(tf.constant(2.0))
        finally:
            sys.setprofile(None)

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            command()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert fired, "the signal must arrive inside TensorFlow's binding for this to test it"
    assert exited.value.code == 143
    assert "terminated by signal 15 while a step's arguments were bound" in capsys.readouterr().err


def test_a_checkpoint_is_written_whole_when_another_thread_takes_the_signal():
    """A SIGTERM sent to the process goes to any thread that does not block it, one of
    TensorFlow's; Python then runs the handler in the main thread at once.  signals_held
    must still hold it until the block has finished."""
    from hpcsnp.cnn.checkpoint import signals_held

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    inside, sent = threading.Event(), threading.Event()

    def send():  # the thread the kernel chose: started before the block, so unaffected by its mask
        inside.wait(10)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        sent.set()

    other = threading.Thread(target=send)
    other.start()
    written = []
    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            with signals_held():
                inside.set()
                assert sent.wait(10)
                for i in range(1000):  # bytecodes at which an unheld handler would have run
                    written.append(i)
    finally:
        signal.signal(signal.SIGTERM, before)
        other.join()
    assert len(written) == 1000


def test_the_refit_learns_from_training_and_validation_for_the_epochs_validation_chose(sim_store, tmp_path):
    """--refit --refit-start fresh: the early-stopped model gives the validation predictions
    (the same as without the refit); the kept model is trained afresh on training + validation
    for its best epoch count, each epoch at the learning rate it had then, with those lines'
    target scale."""
    import keras

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config
    from hpcsnp.folds import fold_split
    from hpcsnp.store import open_store

    # settings under which this fold's best epoch comes before its last (the one-hot channels
    # and seed 1: with seeds 0 and 3 it still improves at epoch 12) and after a learning-rate
    # cut (not so with seed 2, nor at dropout 0.5), so the refit's epochs and their learning
    # rates are tested (the asserts below check both); a warm refit with averaged weights: the test below
    cfg = Config(max_epochs=12, patience=12, batch_size=8, learning_rate=0.02, dropout=0.3, lr_decay_patience=1,
                 lr_decay_steps=0, genotype_basis="onehot", n_models=1, refit_start="fresh", weight_average=0.0,
                 seed=1)
    kept = train_fold(sim_store[0], 1, tmp_path / "kept", cfg.replace(refit=False))
    r = train_fold(sim_store[0], 1, tmp_path / "refit", cfg)
    m, k = r.metrics, kept.metrics
    assert m["history"] == k["history"] and m["best_epoch"] == k["best_epoch"] < m["epochs"]
    assert k["refit"] is None
    refit = m["refit"]
    assert refit["n_train"] == m["n_train"] + m["n_val"] and refit["epochs"] == m["best_epoch"]
    lrs = [cfg.learning_rate] + [h["lr"] for h in m["history"]]
    assert [h["lr"] for h in refit["history"]] == lrs[:m["best_epoch"]]
    assert len(set(lrs[:m["best_epoch"]])) > 1, "the replayed schedule must change for this to test it"
    assert (r.path / "val_predictions.csv").read_bytes() == (kept.path / "val_predictions.csv").read_bytes()
    assert (r.path / "predictions.csv").read_bytes() != (kept.path / "predictions.csv").read_bytes()
    store = open_store(sim_store[0])
    split = fold_split(store.fold, 3, 1)
    both = np.concatenate([split.train, split.val])
    assert m["target_mean"] == pytest.approx(store.phenotype[both].mean())
    model = keras.models.load_model(r.path / "model.keras")  # the refitted model makes the test predictions
    pred = model(one_hot(store.genotypes[:][split.test]), training=False).numpy()[:, 0]
    got = np.loadtxt(r.path / "predictions.csv", delimiter=",", skiprows=1, usecols=3)
    np.testing.assert_allclose(pred * m["target_sd"] + m["target_mean"], got, rtol=1e-4)
    assert not [p.name for p in r.path.iterdir() if p.name in ("refit", "early_stopped.npz", "member.npz")]


def test_a_warm_refit_goes_on_from_the_early_stopped_weights(sim_store, tmp_path):
    """--refit-start warm: the early-stopped model, trained on for --refit-epochs
    epochs over training + validation at a third of its best epoch's learning rate, with the
    early-stopped model's target scale.  With a vanishing learning rate it predicts what the
    early-stopped model does: it starts from those weights, not from an initialisation."""
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config
    from hpcsnp.folds import fold_split
    from hpcsnp.store import open_store

    # dropout1 as well: settings whose best epoch comes before the last (without it here, at the last)
    cfg = Config(max_epochs=12, patience=12, batch_size=8, learning_rate=0.02, dropout=0.5, dropout1=0.5,
                 lr_decay_patience=1, lr_decay_steps=0, genotype_basis="onehot", n_models=1, refit_start="warm",
                 refit_epochs=3)
    kept = train_fold(sim_store[0], 1, tmp_path / "kept", cfg.replace(refit=False))
    r = train_fold(sim_store[0], 1, tmp_path / "warm", cfg)
    m, k = r.metrics, kept.metrics
    assert m["history"] == k["history"] and m["best_epoch"] < m["epochs"]
    refit = m["refit"]
    assert refit["start"] == "warm" and refit["epochs"] == 3 and refit["n_train"] == m["n_train"] + m["n_val"]
    lr_best = ([cfg.learning_rate] + [h["lr"] for h in m["history"]])[m["best_epoch"] - 1]
    assert [h["lr"] for h in refit["history"]] == pytest.approx([lr_best / 3] * 3)
    store = open_store(sim_store[0])
    split = fold_split(store.fold, 3, 1)
    assert m["target_mean"] == pytest.approx(store.phenotype[split.train].mean())  # the early-stopped model's scale
    assert (r.path / "val_predictions.csv").read_bytes() == (kept.path / "val_predictions.csv").read_bytes()

    def test_pred(path):
        return np.loadtxt(path / "predictions.csv", delimiter=",", skiprows=1, usecols=3)

    assert np.max(np.abs(test_pred(r.path) - test_pred(kept.path))) > 1e-3 * np.std(store.phenotype)
    still = train_fold(sim_store[0], 1, tmp_path / "still", cfg.replace(refit_lr_factor=1e-9))
    np.testing.assert_allclose(test_pred(still.path), test_pred(kept.path), rtol=0, atol=1e-5 * np.std(store.phenotype))
    assert not [p.name for p in r.path.iterdir() if p.name.startswith("early_stopped")]


@pytest.mark.parametrize("start", ["fresh", "warm"])
def test_a_fold_killed_during_its_refit_resumes_the_refit(sim_store, tmp_path, start):
    """Killed mid-refit, a rerun neither retrains the early-stopped model nor restarts the
    refit, and gives the uninterrupted run's result bit for bit; either refit."""
    store, _ = sim_store
    # settings whose best epoch is late enough for a kill at epoch 2 to land mid-refit (with the
    # default output L2 and dosage scale this fold's best epoch is 2)
    args = [a for a in ARGS] + ["--l2-dense", "0", "--dosage-scale", "1", "--refit-start", start, "--refit-epochs", "6"]
    args[args.index("--epochs") + 1] = "12"
    run_cli("train", store, *args, "--run", tmp_path / "whole")
    state = tmp_path / "killed" / "sim" / "fold_1.partial" / "refit" / "state.json"
    proc = _train_until(store, args, tmp_path / "killed", state, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = json.loads(state.read_text())["epoch"]
    whole = json.loads((tmp_path / "whole" / "sim" / "fold_1" / "metrics.json").read_text())
    assert 2 <= at_kill < whole["refit"]["epochs"], "the kill must land mid-refit"
    resumed = run_cli("train", store, *args, "--run", tmp_path / "killed")
    assert f"resuming after epoch {at_kill}" in resumed.stderr
    assert "val MAE" not in resumed.stderr  # the early-stopped training was not redone
    a, b = (tmp_path / d / "sim" / "fold_1" for d in ("whole", "killed"))
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    assert (a / "val_predictions.csv").read_bytes() == (b / "val_predictions.csv").read_bytes()
