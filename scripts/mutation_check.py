"""Break the code on purpose, one guarantee at a time, and check that the suite notices.

Each mutation replaces one piece of text in one file, runs the tests said to guard that
guarantee, expects them to fail, and puts the file back (also on Ctrl-C). It prints a
Markdown table of what was broken and which test caught it (benchmarks/NOTES.md keeps one).

    FASHION_MNIST_DIR=... python scripts/mutation_check.py            # every mutation
    FASHION_MNIST_DIR=... python scripts/mutation_check.py digest pool  # some of them
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "alexnet_jax/"

# name: (guarantee, file, text, replacement, tests)
MUTATIONS = {
    "resume-late": (
        "resume bit-exact after a stop", PKG + "training/loop.py",
        "first = max(start_step - epoch * run.steps_per_epoch, 0)",
        "first = max(start_step - epoch * run.steps_per_epoch, 0) + (start_step > 0)",
        ["tests/test_faults.py::test_stop_at_an_epochs_last_step_resumes_to_the_same_run"]),
    "metrics-cut": (
        "a resume drops the points logged past its checkpoint", PKG + "training/metrics_log.py",
        'if p["step"] <= resume_step]', 'if p["step"] <= resume_step + 1]',
        ["tests/test_faults.py::test_stop_at_an_epochs_last_step_resumes_to_the_same_run"]),
    "optimizer-per-run": (
        "a second run in a process traces nothing the first traced", PKG + "training/steps.py",
        "@functools.cache\ndef make_optimizer", "def make_optimizer",
        ["tests/test_train.py::test_rerun_trains_nothing_and_more_epochs_resume"]),
    "model-per-run": (
        "a second run in a process traces nothing the first traced", PKG + "model/build.py",
        "@functools.cache\ndef build_model", "def build_model",
        ["tests/test_train.py::test_rerun_trains_nothing_and_more_epochs_resume"]),
    "orphaned-reads": (
        "a failed read prints one line", PKG + "training/checkpoints.py",
        'read_error = isinstance(exc, ValueError) and "Error reading " in str(exc)',
        "read_error = False",
        ["tests/test_failure_paths.py::test_the_reads_orphaned_by_a_failed_read_print_nothing"]),
    "timed-compile": (
        "no timed step compiles", PKG + "training/steps.py",
        "return compiled[images.shape[0]](state, images, labels, metrics)",
        "return steps.train(state, images, labels, metrics)",
        ["tests/test_train.py::test_no_timed_step_compiles"]),
    "shuffle-epoch": (
        "each epoch reshuffled from (seed, epoch)", PKG + "data/input_pipeline.py",
        "np.random.default_rng([seed, epoch])", "np.random.default_rng([seed, 0])",
        ["tests/test_data.py::test_epoch_order_and_batches"]),
    "winograd-sign": (
        "Winograd equal to XLA's convolutions", PKG + "kernels/winograd.py",
        "POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5,",
        "POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 0.5,",
        ["tests/test_fast_grads.py::test_conv_value_and_grads_equal_xla"]),
    "dropout-key": (
        "a fresh dropout key each step", PKG + "training/steps.py",
        "jax.random.fold_in(jax.random.wrap_key_data(rng), step)",
        "jax.random.fold_in(jax.random.wrap_key_data(rng), 0)",
        ["tests/test_augment.py::test_each_train_step_drops_with_its_own_key_at_d2ls_rate"]),
    "digest": (
        "a checkpoint's bytes checked against its SHA-256", PKG + "training/checkpoints.py",
        "if recorded is not None and recorded != tree_digest(tree):", "if False:",
        ["tests/test_failure_paths.py::"
         "test_the_digest_is_part_of_its_checkpoint_and_old_ones_still_verify"]),
    "proof-only": (
        "only proof moves a checkpoint aside", PKG + "training/checkpoints.py",
        "if proven := damage(path, err):", "if proven := f'{err}':",
        ["tests/test_failure_paths.py::"
         "test_a_read_error_is_read_again_and_only_one_that_persists_stops[arrays-always]"]),
    "memory-check": (
        "a batch that cannot fit is refused before the first step", PKG + "runtime/memory.py",
        "if available is not None and need > available:", "if False:",
        ["tests/test_failure_paths.py::"
         "test_a_batch_that_cannot_fit_is_refused_before_anything_is_written"]),
    "manager-closed": (
        "a start that fails closes its checkpoint manager", PKG + "training/loop.py",
        "with checkpoints.manager(workdir, keep=config.keep_checkpoints) as mngr:",
        "with contextlib.nullcontext(checkpoints.manager(workdir, "
        "keep=config.keep_checkpoints)) as mngr:",
        ["tests/test_failure_paths.py::test_a_failed_start_leaves_no_manager_open"]),
    "write-path": (
        "a write that fails names its path and reason", PKG + "training/run_dir.py",
        "raise cannot_write(path, err) from err", "raise",
        ["tests/test_failure_paths.py::test_a_record_that_cannot_be_written_names_its_path"]),
    "record-shape": (
        "a record that is no point is named with its line", PKG + "training/metrics_log.py",
        'if not (isinstance(point, dict) and isinstance(point.get("step"), int)):',
        "if False:",
        ["tests/test_failure_paths.py::test_a_record_that_is_no_point_is_named_with_its_line"]),
    "download-disk": (
        "a full disk is not retried as a dropped connection", PKG + "data/download.py",
        "raise cannot_write(part, err) from None",
        "raise Dropped(f'connection dropped ({err})') from None",
        ["tests/test_download.py::test_a_disk_that_fills_is_named_not_retried"]),
    "whole-part": (
        "a whole part is checked, not re-requested", PKG + "data/download.py",
        "if _keep_complete_part(folder / gz, out):", "if False:",
        ["tests/test_download.py::"
         "test_a_part_left_whole_is_kept_and_a_wrong_one_started_over"]),
    "peer-failure": (
        "a failed process stops the others with its reason", PKG + "runtime/parallel.py",
        'key_value_set(f"{FAILED_KEY}{jax.process_index()}", line)', "get_live_nodes([])",
        ["tests/test_lost_process.py::"
         "test_a_process_that_fails_stops_the_others_with_its_reason"]),
    "time-limit": (
        "a test that hangs fails", "pyproject.toml", "timeout = 600", "",
        ["tests/test_failure_paths.py::test_a_test_that_hangs_fails_at_the_time_limit"]),
    "resize-rounding": (
        "every pixel equal to Pillow's", PKG + "data/preprocess.py",
        "jnp.clip((total + _HALF) >> PRECISION_BITS, 0, 255)",
        "jnp.clip(total >> PRECISION_BITS, 0, 255)",
        ["tests/test_data.py::test_resize_matches_pillow_on_random_images"]),
    "loss-sum": (
        "the step equal to d2l's PyTorch step", PKG + "training/steps.py",
        "jnp.where(real, losses, 0.0)", "jnp.where(real, losses, 0.0) * 1.01",
        ["tests/test_equivalence.py::test_grads_float32_random"]),
    "padding-counted": (
        "N devices equal one (padded last batch)", PKG + "training/steps.py",
        "return jnp.where(real, losses, 0.0)", "return losses",
        ["tests/test_parallel.py::test_padding_examples_change_nothing"]),
    "process-rows": (
        "N devices in N processes equal one: each process loads its devices' rows",
        PKG + "runtime/parallel.py", "    return slice(start, stop)\n",
        "    return slice(0, stop - start)\n",
        ["tests/test_parallel.py::test_two_processes_of_two_devices_equal_one_and_restore_on_one"]),
    "device-gather": (
        "the device pipeline's batches on 4 devices are the host pipeline's",
        PKG + "data/input_pipeline.py", "return model_input(images[indices]),",
        "return model_input(images[jnp.roll(indices, 1)]),",
        ["tests/test_parallel.py::test_device_pipeline_delivers_the_same_batches_on_four_devices"]),
    "metadata-unread": (
        "a state's metadata read as None with its file there is read again",
        PKG + "training/checkpoints.py", "        if not file.exists():\n", "        if True:\n",
        ["tests/test_failure_paths.py::test_metadata_that_reads_as_none_once_is_read_again"]),
    "checkpoint-zstd": (
        "checkpoint arrays are stored uncompressed",
        PKG + "training/checkpoints.py", "use_compression=False", "use_compression=True",
        ["tests/test_train.py::test_train_writes_d2l_outputs"]),
    "finite-check": (
        "nothing non-finite is saved", PKG + "training/run_state.py",
        "if bad := checkpoints.non_finite(tree):", "if bad := []:",
        ["tests/test_faults.py::test_parameters_that_go_non_finite_are_never_saved"]),
    "corrupt-fallback": (
        "a corrupt checkpoint is set aside, the previous one used", PKG + "training/checkpoints.py",
        "if strict or step is not None:", "if True:",
        ["tests/test_faults.py::test_corrupted_checkpoint_is_detected"]),
    "restart-records": (
        "--restart sets aside every record, profiles included", PKG + "training/layout.py",
        "RECORDS = (CONFIG, METRICS, CURVES, EVENTS, PROFILE,",
        "RECORDS = (CONFIG, METRICS, CURVES, EVENTS,",
        ["tests/test_layout.py::test_restart_sets_aside_every_record_of_a_run"]),
    "f64-late": (
        "a float64 run read without 64-bit mode: one line, no JAX warnings before it",
        PKG + "training/saved_state.py",
        "    if x64_missing(config.dtype):  # before building", "    if False:  # before building",
        ["tests/test_faults.py::test_float64_checkpoint_read_without_x64_is_named_not_moved"]),
    "verbose-ignored": (
        "--verbose brings the libraries' log lines back", PKG + "cli.py",
        "    if not args.verbose:\n        quiet_logs()", "    if True:\n        quiet_logs()",
        ["tests/test_train.py::test_evaluate_prints_no_log_noise"]),
    "mfu-devices": (
        "MFU against the peak of every chip the row ran on", PKG + "commands/benchmark.py",
        "peak = None if chip is None else chip * devices", "peak = chip",
        ["tests/test_benchmark.py::test_each_figure_is_one_the_hardware_allows"]),
    "dense-float32": (
        "the CPU's dense layer keeps float64 in float64", PKG + "kernels/dot.py",
        "t = jnp.promote_types(jnp.result_type(a, b), jnp.float32)", "t = jnp.float32",
        ["tests/test_equivalence.py"]),
    "bias-grad-float32": (
        "the CPU's dense layer keeps float64 in float64", PKG + "kernels/layers.py",
        "g.astype(jnp.promote_types(g.dtype, jnp.float32))", "g.astype(jnp.float32)",
        ["tests/test_equivalence.py"]),
    "bf16-bound": (
        "each bf16 layer within the bound argued from bf16's rounding", PKG + "kernels/dot.py",
        "    return _dot(x, w, PLAIN, precision).astype(x.dtype)",
        "    return _dot(x, w.astype(jnp.bfloat16), PLAIN, precision).astype(x.dtype)",
        ["tests/test_bf16.py::test_each_bf16_layer_against_float64_beside_autocast"]),
    "lost-peer": (
        "a lost process ends the survivor with one line", PKG + "cli.py",
        "    if lost_processes():\n        exit_lost_process(str(err))",
        "    if False:\n        exit_lost_process(str(err))",
        ["tests/test_lost_process.py"]),
    "augment-key": (
        "augmentation drawn from the step's key", PKG + "training/steps.py",
        "jax.random.fold_in(dropout_key, AUGMENT_STREAM)",
        "jax.random.fold_in(jax.random.key(0), AUGMENT_STREAM)",
        ["tests/test_augment.py::test_each_step_draws_its_own_augmentation"]),
    "default-lr": (
        "d2l's defaults in one place", PKG + "config.py",
        "lr: float = 0.01", "lr: float = 0.1",
        ["tests/test_cli.py::test_train_defaults_are_the_configs"]),
    "cli-imports-jax": (
        "help and usage errors without JAX", PKG + "cli_parser.py",
        "import math\n", "import math\n\nimport jax  # noqa: F401\n",
        ["tests/test_cli.py::test_help_and_a_bad_flag_import_no_jax"]),
}


def run(name: str) -> tuple[str, str, float]:
    """(verdict, the failing tests, seconds) of one mutation."""
    _, rel, old, new, tests = MUTATIONS[name]
    path = ROOT / rel
    original = path.read_text()
    if original.count(old) != 1:
        return f"NOT APPLIED: the text occurs {original.count(old)} times in {rel}", "", 0.0
    t0 = time.monotonic()
    try:
        path.write_text(original.replace(old, new))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                               "no:cacheprovider", "-o", "addopts=", *tests],
                              cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    failed = sorted(set(re.findall(r"^FAILED (.+?)(?: - .*)?$", proc.stdout, re.M)))
    verdict = "caught" if proc.returncode == 1 and failed else \
        f"NOT CAUGHT (pytest exit {proc.returncode})"
    return verdict, ", ".join(f"`{t.split('::', 1)[1]}`" for t in failed), \
        time.monotonic() - t0


def main(names: list[str]) -> int:
    names = names or list(MUTATIONS)
    print("| mutation | guarantee | what was changed | verdict | failing test | s |")
    print("| --- | --- | --- | --- | --- | ---: |")
    missed = 0
    for name in names:
        guarantee, rel, old, new, _ = MUTATIONS[name]
        verdict, failed, seconds = run(name)
        missed += verdict != "caught"
        change = f"`{rel}`: `{old.strip()}` -> `{new.strip()}`".replace("|", "\\|").replace(
            "\n", "\\n")
        print(f"| {name} | {guarantee} | {change} | {verdict} | {failed} | {seconds:.0f} |",
              flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
