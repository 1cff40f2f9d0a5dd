"""Training, resuming, evaluation, prediction and conversion through the CLI, on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import (
    assert_same_params,
    copy_run,
    d2l_images,
    eval_logits,
    jax_events,
    params_of,
    rel_err,
    train_args,
)

from alexnet_jax.cli import main
from alexnet_jax.training.saved_state import load_state


@pytest.fixture(scope="module")
def trained(reference_dir, tmp_path_factory):
    """The small 2-epoch run, trained by `main(train_args(...))` (conftest's reference run)."""
    return copy_run(reference_dir, tmp_path_factory.mktemp("run") / "w")


@pytest.mark.slow
def test_train_writes_d2l_outputs(trained, capsys):
    files = {p.name for p in trained.iterdir()}
    assert {"metrics.jsonl", "curves.png", "config.json", "checkpoints"} <= files
    points = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    ends = [p for p in points if p["test_acc"] is not None]
    assert [p["epoch"] for p in ends] == [1.0, 2.0]
    assert len(points) == 2 * 3  # 3 steps per epoch: d2l's points at steps 1, 2 and 3
    for p in points:
        assert 0 <= p["train_acc"] <= 1 and np.isfinite(p["train_loss"]) and p["train_loss"] > 0
        assert p["examples_per_sec"] > 0
    config = json.loads((trained / "config.json").read_text())
    assert config["settings"]["batch_size"] == 4 and "jax" in config["versions"]
    assert sorted(int(p.name) for p in (trained / "checkpoints").iterdir()
                  if p.name.isdigit()) == [3, 6]
    # The arrays are stored whole, not zstd-compressed (which saves 9% of the bytes, at twice
    # the CPU of each save and restore).
    stored = sum(f.stat().st_size for f in (trained / "checkpoints" / "6").rglob("*")
                 if f.is_file())
    raw = sum(leaf.nbytes for leaf in jax.tree.leaves(params_of(trained)))
    assert stored >= raw, (stored, raw)


@pytest.mark.slow
def test_rerun_trains_nothing_and_more_epochs_resume(trained, fashion_mnist_dir, capsys):
    """...and the resumed run, the second in this process, traces nothing the first traced (its
    train step, init): it reuses them (a notebook's second run, these tests)."""
    before = params_of(trained)
    with jax_events("jaxpr_trace_duration") as rerun_traced:
        assert main(train_args(trained, fashion_mnist_dir)) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "test acc" in out and "resuming" not in out
    assert_same_params(params_of(trained), before)
    with jax_events("jaxpr_trace_duration") as resumed_traced:
        assert main(train_args(trained, fashion_mnist_dir, 3)) == 0
    assert set(rerun_traced) & set(resumed_traced) == set(), (rerun_traced, resumed_traced)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint at step 6 (epoch 3, batch 0)" in out
    assert "epoch 3.00 step 9/9" in out
    assert "train: 7 of 9 steps (77%), ETA" in out  # progress lines without a terminal
    assert "on this CPU a step takes" in out and "d2l's full run would take roughly" in out
    points = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in points if p["test_acc"] is not None] == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_conflicting_settings_are_refused(trained, fashion_mnist_dir, capsys):
    args = train_args(trained, fashion_mnist_dir)
    args[args.index("--batch-size") + 1] = "8"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "batch_size=4" in err and "8 now" in err and "Traceback" not in err


@pytest.mark.slow
def test_no_timed_step_compiles(fashion_mnist_dir, train_split):
    """compile_steps compiles every batch shape an epoch has; the epoch then compiles nothing
    (the first timed step used to compile again, inside d2l's examples/sec)."""
    from alexnet_jax.data.input_pipeline import make_pipeline
    from alexnet_jax.model.build import build_model
    from alexnet_jax.runtime.parallel import make_mesh, put_replicated
    from alexnet_jax.training.steps import (
        compile_steps,
        create_train_state,
        empty_metrics,
        jit_steps,
    )

    mesh = make_mesh()
    pipe = make_pipeline("device", train_split.head(10), 4, True, 0, mesh)  # 4, 4, then 2
    state = put_replicated(create_train_state(build_model(), 0, 0.01), mesh)
    metrics = put_replicated(empty_metrics(), mesh)
    train, _, _ = compile_steps(jit_steps(mesh), state, metrics, pipe)
    compiles = []  # inside the timed step (not the pipeline's gather)
    for batch in pipe.epoch(0):
        with jax_events("backend_compile_duration") as step_compiles:
            state, metrics = train(state, batch.images, batch.labels, metrics)
            jax.block_until_ready(metrics)
        compiles += step_compiles
    assert int(metrics["count"]) == 10 and compiles == []


@pytest.mark.slow
@pytest.mark.torch
def test_convert_from_torch_same_accuracy(fashion_mnist_dir, test_split, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from alexnet_jax.d2l.reference import d2l_net, nhwc_to_nchw

    net = d2l_net(seed=11)
    with torch.no_grad():
        x = d2l_images(test_split, 0, 64)
        net.eval()
        torch_pred = net(nhwc_to_nchw(x)).argmax(1).numpy()
    torch_acc = float(np.mean(torch_pred == test_split.labels[:64]))
    pt = tmp_path / "d2l.pt"
    torch.save(net.state_dict(), pt)
    workdir = tmp_path / "converted"
    assert main(["convert", "--from-torch", str(pt), "--workdir", str(workdir)]) == 0
    assert main(["evaluate", "--workdir", str(workdir), "--manual-dir", str(fashion_mnist_dir),
                 "--source", "idx", "--limit-test", "64"]) == 0
    out = capsys.readouterr().out
    assert f"test acc {torch_acc:.4f} on 64 test images" in out


@pytest.mark.slow
@pytest.mark.torch
def test_to_torch_loads_into_d2l_model(trained, test_split, tmp_path):
    torch = pytest.importorskip("torch")
    from alexnet_jax.d2l.reference import d2l_net, nhwc_to_nchw

    pt = tmp_path / "out.pt"
    assert main(["convert", "--to-torch", str(pt), "--workdir", str(trained)]) == 0
    net = d2l_net(seed=0)
    net.load_state_dict(torch.load(pt))
    net.eval()
    x = d2l_images(test_split, 0, 4)
    state, _ = load_state(trained)
    ours = np.asarray(eval_logits(state.apply_fn, state.params, x))
    with torch.no_grad():
        theirs = net(nhwc_to_nchw(x)).numpy()
    assert rel_err(ours, theirs) <= 1e-5


@pytest.mark.slow
@pytest.mark.torch
def test_d2l_torch_accuracy_counts_the_predictions_that_differ(trained, fashion_mnist_dir,
                                                               tmp_path, monkeypatch, capsys):
    """scripts/d2l_torch_accuracy.py on a trained run's first 40 test images: the converted
    weights in d2l's net predict what ours do; one prediction changed in our CSV is found."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "d2l_torch_accuracy", Path(__file__).parents[1] / "scripts" / "d2l_torch_accuracy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    pt, ours, out = tmp_path / "ours.pt", tmp_path / "ours.csv", tmp_path / "acc.json"
    assert main(["convert", "--to-torch", str(pt), "--workdir", str(trained)]) == 0
    assert main(["predict", "--workdir", str(trained), "--num", "40", "--csv", str(ours),
                 "--manual-dir", str(fashion_mnist_dir), "--source", "idx",
                 "--out", str(tmp_path / "grid.png")]) == 0
    argv = ["d2l_torch_accuracy", "--weights", str(pt), "--ours", str(ours),
            "--manual-dir", str(fashion_mnist_dir), "--batch-size", "16", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    result = json.loads(out.read_text())
    rows = [r.split(",") for r in ours.read_text().splitlines()[1:]]
    right = sum(true == predicted for _, true, predicted in rows)
    assert result["images"] == 40 and result["predictions_that_differ"] == 0
    assert result["d2l_pytorch_test_acc"] == result["alexnet_jax_test_acc"] == right / 40
    assert "covers the first 40 test images only" in capsys.readouterr().out

    _, true, predicted = rows[5]  # made wrong if right, right if wrong
    rows[5][2] = true if predicted != true else ("bag" if true != "bag" else "shirt")
    ours.write_text("index,true,predicted\n" + "".join(",".join(r) + "\n" for r in rows))
    script.main()
    result = json.loads(out.read_text())
    assert result["predictions_that_differ"] == 1 and result["differing"][0]["index"] == 5
    assert abs(result["difference_pp"]) == pytest.approx(100 / 40)


@pytest.mark.slow
def test_predict_works_in_bounded_batches(trained, test_split):
    from alexnet_jax.commands.evaluate import predict_classes
    from alexnet_jax.data.preprocess import model_input

    state, _ = load_state(trained)
    images = test_split.images[:7]
    whole = np.argmax(eval_logits(state.apply_fn, state.params, images, model_input), -1)
    np.testing.assert_array_equal(predict_classes(state, images, batch=3), whole)


@pytest.mark.slow
def test_predict_writes_grid_and_text(trained, fashion_mnist_dir, tmp_path, capsys):
    out_png = tmp_path / "pred.png"
    assert main(["predict", "--workdir", str(trained), "--num", "6", "--out", str(out_png),
                 "--manual-dir", str(fashion_mnist_dir), "--source", "idx"]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "ankle boot ->" in text and "pullover ->" in text  # d2l's names of images 0 and 1


@pytest.mark.slow
def test_predict_clips_num_bounds_the_picture_and_writes_every_row_to_csv(
        trained, fashion_mnist_dir, tmp_path, capsys, monkeypatch):
    """A test set of 30 (the real first 30), --num 50: clipped with a note; the grid shows at
    most MAX_SHOWN (8 here) images, wrong ones first when asked; the CSV has all 30 rows."""
    from alexnet_jax.commands import evaluate as commands
    from alexnet_jax.data.fashion_mnist import CLASS_NAMES
    from alexnet_jax.observe import plots

    real_load = commands.load_split
    monkeypatch.setattr(commands, "load_split", lambda *a: real_load(*a).head(30))
    monkeypatch.setattr(commands, "MAX_SHOWN", 8)
    drawn = {}
    monkeypatch.setattr(plots, "plot_predictions",
                        lambda images, titles, out, wrong: drawn.update(titles=titles,
                                                                        wrong=list(wrong)))
    csv = tmp_path / "preds.csv"
    assert main(["predict", "--workdir", str(trained), "--num", "50", "--csv", str(csv),
                 "--wrong-first", "--manual-dir", str(fashion_mnist_dir), "--source", "idx"]) == 0
    out = capsys.readouterr().out
    assert "note: --num 50 is more than the 30 test images; predicting all 30" in out
    rows = csv.read_text().splitlines()
    assert rows[0] == "index,true,predicted" and len(rows) == 31
    assert rows[1].startswith("0,ankle boot,") and "->" not in out  # the CSV, not the console
    wrong = [r.split(",")[1] != r.split(",")[2] for r in rows[1:]]
    assert all(name in CLASS_NAMES for r in rows[1:] for name in r.split(",")[1:])
    assert len(drawn["titles"]) == 8 and drawn["wrong"] == sorted(wrong, reverse=True)[:8]
    assert f"{30 - sum(wrong)} of 30 right" in out


def test_picture_shows_wrong_ones_first_in_their_order():
    from alexnet_jax.commands.evaluate import shown_in_picture

    wrong = np.array([False, True, False, True, True])
    assert shown_in_picture(wrong, True, limit=4).tolist() == [1, 3, 4, 0]
    assert shown_in_picture(wrong, False, limit=3).tolist() == [0, 1, 2]


def test_wrong_predictions_are_titled_in_red(tmp_path):
    from alexnet_jax.observe.plots import plot_predictions

    images = np.zeros((3, 28, 28), np.uint8)
    fig = plot_predictions(images, ["bag\nbag", "coat\nshirt", "dress\ndress"],
                           tmp_path / "p.png", wrong=[False, True, False])
    colours = [ax.title.get_color() for ax in fig.axes[:3]]
    assert colours == ["black", "red", "black"]


@pytest.mark.parametrize("bad", [["--lr", "0"], ["--lr", "-1"], ["--batch-size", "0"],
                                 ["--epochs", "-2"], ["--lr", "abc"]])
def test_bad_numbers_are_usage_errors(bad, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir",
                           str(tmp_path), *bad], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "expected a positive" in proc.stderr


def test_evaluate_missing_workdir_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--workdir", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.fixture(scope="module")
def tfds_run(fashion_mnist_dir, tmp_path_factory):
    """`python -m alexnet_jax train` on the tfds source with a fresh tfds data dir: its data
    dir, work dir and the finished process (tfds prepares its copy once, here)."""
    tmp = tmp_path_factory.mktemp("tfds_run")
    cmd = [sys.executable, "-m", "alexnet_jax", "train", "--workdir", str(tmp / "w"),
           "--manual-dir", str(fashion_mnist_dir), "--source", "tfds", "--data-dir",
           str(tmp / "tfds"), "--limit-train", "4", "--limit-test", "4", "--batch-size", "4",
           "--epochs", "1"]
    return tmp / "tfds", tmp / "w", subprocess.run(cmd, capture_output=True, text=True,
                                                   timeout=300)


@pytest.mark.slow
def test_train_prints_no_log_noise(tfds_run):
    """Only our lines, nothing on stderr (TensorFlow is imported by tfds and by tensorboard's
    event writer: both quietly), the first use of a tfds data dir included, which says in one
    line of ours that it prepares tfds' copy."""
    _, _, done = tfds_run
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("preparing tensorflow-datasets' copy of Fashion-MNIST in "), lines
    assert lines[1].startswith("prepared it in ") and lines[-3].startswith("loss "), lines


@pytest.mark.slow
def test_evaluate_prints_no_log_noise(tfds_run, fashion_mnist_dir):
    """evaluate prints only our lines and nothing on stderr (no absl, orbax, JAX line; the
    tfds source's TensorFlow and tfds lines are train's test above, through the same import);
    --verbose brings the libraries' lines back (orbax's, through absl)."""
    _, workdir, _ = tfds_run
    cmd = [sys.executable, "-m", "alexnet_jax.cli", "evaluate", "--workdir", str(workdir),
           "--manual-dir", str(fashion_mnist_dir)]
    quiet = subprocess.run([*cmd, "--source", "idx"], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.startswith("checkpoint step ") and "test loss" in quiet.stdout
    assert "on 4 test images" in quiet.stdout  # the run's own --limit-test, by default
    assert len(quiet.stdout.splitlines()) == 1, quiet.stdout
    verbose = subprocess.run([*cmd[:3], "--verbose", *cmd[3:], "--source", "idx"],
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "WARNING:absl" in verbose.stderr


@pytest.mark.slow
def test_tfds_and_idx_sources_identical(tfds_run, fashion_mnist_dir, train_split, test_split):
    """tfds' prepared copy and the release files read directly: the same arrays, in order."""
    from alexnet_jax.data.fashion_mnist import load_tfds_split

    for name, idx in (("train", train_split), ("test", test_split)):
        tf_split = load_tfds_split(name, data_dir=str(tfds_run[0]),
                                   manual_dir=str(fashion_mnist_dir))
        np.testing.assert_array_equal(tf_split.images, idx.images)
        np.testing.assert_array_equal(tf_split.labels, idx.labels)


def test_tensorflow_import_noise_is_dropped_and_the_rest_kept(capfd, monkeypatch):
    """The C++ INFO/WARNING lines TensorFlow writes to fd 2 at import (oneDNN's notice on
    AVX-512 CPUs, absl's banner) are dropped; an error line and Python's output are kept.
    Forced here with C-level writes, so it holds on CPUs that never print them."""
    import os

    from alexnet_jax.runtime.tf_import import c_stderr_filtered

    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
             "STDERR\nI0000 00:00:1796187609.000969    1933 port.cc:153] oneDNN custom "
             "operations are on. ... `TF_ENABLE_ONEDNN_OPTS=0`.\nW0000 00:00:1796187609.1 "
             "12 cpu_feature_guard.cc:210] This TensorFlow binary is optimized ...\n")
    kept = "E0000 00:00:1796187609.2 12 kernel.cc:1] a real error\n"
    with c_stderr_filtered():
        os.write(2, (noise + kept).encode())
        print("python's own line", file=sys.stderr)
    err = capfd.readouterr().err  # pytest takes sys.stderr's line apart from fd 2's
    assert sorted(err.splitlines(True)) == sorted([kept, "python's own line\n"]), err


def test_every_flag_has_help_and_its_default(capsys):
    from alexnet_jax.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)  # every flag says what it does
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert f"examples:\n  alexnet-jax {name}" in text, name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("runs/alexnet", "10", "128", "0.01", "device", "auto", "3", "float32"):
        assert f"(default: {default})" in text, default


def test_summary_shapes_and_params(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    shapes = [line.split()[-3] for line in out.splitlines() if line.startswith(("conv", "fc",
                                                                                 "MaxPool"))]
    assert shapes == ["54x54x96", "26x26x96", "26x26x256", "12x12x256", "12x12x384",
                      "12x12x384", "12x12x256", "5x5x256", "4096", "4096", "10"]
    assert "total parameters: 46,764,746" in out
    from alexnet_jax import AlexNet, init_params

    n = sum(p.size for p in jax.tree.leaves(init_params(AlexNet(), jax.random.key(0))))
    assert n == 46_764_746


def test_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import alexnet_jax, "
            "alexnet_jax.training.loop, alexnet_jax.d2l.torch_weights; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr




# What checkpoints hold, as every earlier release wrote them: a tree that still matches this
# restores them (tests/test_train.py::test_sigkill... resumes through the same code). The
# parameters' shapes come from the model's one walk of its layers (which the PyTorch
# equivalence tests hold to d2l's net); the rest of the format is written out here.
CHECKPOINT_LAYOUT = {
    "['epoch_metrics']['correct']": ("int32", ()),
    "['epoch_metrics']['count']": ("int32", ()),
    "['epoch_metrics']['loss_sum']": ("float32", ()),
    "['rng']": ("uint32", (2,)),
    "['step']": ("int32", ()),
    "['totals']['train_examples']": ("int64", ()),
    "['totals']['train_seconds']": ("float64", ()),
    "['totals']['wall_seconds']": ("float64", ()),
}


def test_checkpoint_layout_unchanged():
    """Checkpoints written by earlier releases restore: same paths, dtypes, shapes, and an
    optimizer state of two empty SGD states."""
    from alexnet_jax.model.alexnet import layers
    from alexnet_jax.model.build import build_model
    from alexnet_jax.training.checkpoints import checkpoint_tree, empty_totals
    from alexnet_jax.training.steps import create_train_state, empty_metrics

    state = jax.eval_shape(lambda: create_train_state(build_model(), 0, 0.01))
    tree = checkpoint_tree(state, empty_metrics(), empty_totals())
    layout = {jax.tree_util.keystr(path): (str(np.dtype(leaf.dtype)), tuple(leaf.shape))
              for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    params = {f"['params']['{r['name']}']['{part}']": ("float32", shape)
              for r in layers() if r["kernel"]
              for part, shape in (("kernel", r["kernel"]), ("bias", r["kernel"][-1:]))}
    assert params["['params']['fc1']['kernel']"] == ("float32", (6400, 4096))
    assert layout == {**CHECKPOINT_LAYOUT, **params}
    assert [type(s).__name__ for s in tree["opt_state"]] == ["EmptyState", "EmptyState"]


@pytest.mark.slow
@pytest.mark.parametrize("sync", [False, True], ids=["one-in-flight", "sync-steps"])
def test_the_next_step_is_dispatched_before_the_host_waits(sync, fashion_mnist_dir, tmp_path,
                                                           capsys, monkeypatch):
    """By default step i + 1 is dispatched before the host waits for step i (except where the
    current step is read: a log point, a save, the epoch's end), and the closing line says
    what examples/sec timed; --sync-steps (d2l's timing) waits for every step before the
    next. The same 3 steps either way."""
    from alexnet_jax.cli import main
    from alexnet_jax.training import loop

    events = []
    real_compile, real_check = loop.compile_steps, loop.check_loss

    def compile_recording(*args):
        step, seconds, compiled = real_compile(*args)

        def recorded(*step_args):
            result = step(*step_args)
            events.append(("dispatch", sum(kind == "dispatch" for kind, _ in events) + 1))
            return result

        return recorded, seconds, compiled

    def check_recording(run, tally, metrics, step):  # right after the wait for that step
        events.append(("waited", step))
        return real_check(run, tally, metrics, step)

    monkeypatch.setattr(loop, "compile_steps", compile_recording)
    monkeypatch.setattr(loop, "check_loss", check_recording)
    # 10 steps of 2 images: d2l's 5 points an epoch fall on the even steps, so the odd ones
    # are read by nothing before the next step.
    args = ["train", "--workdir", str(tmp_path / "w"), "--epochs", "1", "--manual-dir",
            str(fashion_mnist_dir), "--limit-train", "20", "--limit-test", "4",
            "--batch-size", "2", "--source", "idx", *(["--sync-steps"] if sync else [])]
    assert main(args) == 0
    out = capsys.readouterr().out
    waits = [n for kind, n in events if kind == "waited"]
    dispatches = [n for kind, n in events if kind == "dispatch"]
    assert dispatches == waits == list(range(1, 11)), events  # each step checked once
    ahead = [n for n in dispatches[1:] if events.index(("dispatch", n)) <
             events.index(("waited", n - 1))]
    closing = next(line for line in out.splitlines() if "examples/sec on" in line)
    if sync:
        assert not ahead, events
        assert closing.endswith("examples/sec on cpu:0"), closing
    else:
        assert ahead == [2, 4, 6, 8, 10], events  # each odd step waited for behind the next
        assert closing.endswith("examples/sec on cpu:0 (the wall time of the epochs' steps, "
                                "one in flight; --sync-steps times each step alone, as d2l)")
