"""The train state, the pure jitted train and eval steps (d2l's train_ch6 inner loop), and
`evaluate` (d2l's evaluate_accuracy_gpu)."""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from ..data.augment import augment as augment_batch
from ..data.padding import is_real
from ..data.preprocess import batch_spec, model_input
from ..model.alexnet import AlexNet, init_params
from ..runtime import memory
from ..runtime.parallel import batch_sharding, make_mesh, put_replicated, replicated

AUGMENT_STREAM = 1  # a step's augmentation key: fold_in(its dropout key, AUGMENT_STREAM)


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the dropout key: everything a step changes."""

    rng: jax.Array  # key data; a step's keys derive from it (step_keys)


@functools.cache
def make_optimizer(lr: float) -> optax.GradientTransformation:
    """d2l: plain SGD, no momentum, no weight decay. One object per lr: a state's optimizer
    is part of what jit matches a step's trace by (build_model's apply_fn too)."""
    return optax.sgd(lr)


def create_train_state(model: AlexNet, seed: int, lr: float, params=None) -> TrainState:
    """A fresh state: d2l's init from `seed`, or the given params (a converted checkpoint)."""
    init_key = jax.random.split(jax.random.key(seed))[0]
    if params is None:
        params = init_params(model, init_key)
    params = jax.tree.map(lambda p: jnp.asarray(p, model.param_dtype), params)
    tx = make_optimizer(lr)
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params,
                      tx=tx, opt_state=tx.init(params), rng=run_rng(seed))


def run_rng(seed: int) -> jax.Array:
    """The TrainState.rng of a run with this seed (its step keys derive from it)."""
    return jax.random.key_data(jax.random.split(jax.random.key(seed))[1])


def step_keys(rng, step) -> tuple[jax.Array, jax.Array]:
    """A train step's (dropout key, augmentation key): the second is derived from the first,
    so that the dropout masks are the same with `--augment` or without."""
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    return dropout_key, jax.random.fold_in(dropout_key, AUGMENT_STREAM)


def step_input(rng, step, images, augment: bool):
    """(the model's input, the dropout key) of a train step: d2l's preprocessing, then AlexNet's
    augmentation (data/augment.py) with `augment`."""
    dropout_key, augment_key = step_keys(rng, step)
    x = model_input(images)
    return (augment_batch(augment_key, x) if augment else x), dropout_key


def cross_entropy(logits, labels):
    """Per-example cross-entropy (d2l's nn.CrossEntropyLoss, before its mean); 0 for padding
    examples, so sums over a padded batch are sums over its real examples."""
    real = is_real(labels)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(real, labels, 0))
    return jnp.where(real, losses, 0.0)


def empty_metrics(state: TrainState | None = None) -> dict[str, jax.Array]:
    """Zero sums; the loss sum in float32, or float64 for float64 params (as d2l's
    Accumulator sums in Python floats), so that float64 runs report to float64 precision."""
    wide = state is not None and jax.tree.leaves(state.params)[0].dtype == jnp.float64
    return {"loss_sum": jnp.zeros((), jnp.float64 if wide else jnp.float32),
            "correct": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}


def _batch_metrics(losses, logits, labels) -> dict[str, jax.Array]:
    """Sums over the real examples of a batch."""
    real = is_real(labels)
    return {
        "loss_sum": jnp.sum(losses),  # float32 (logits are float32 or wider), float64 in x64
        "correct": jnp.sum(real & (jnp.argmax(logits, -1) == labels)).astype(jnp.int32),
        "count": jnp.sum(real).astype(jnp.int32),
    }


def mean_loss(losses, labels):
    """d2l's mean cross-entropy over the real examples (a padded batch has fewer)."""
    return jnp.sum(losses) / jnp.maximum(jnp.sum(is_real(labels)), 1)


def train_step(state: TrainState, images, labels, metrics, augment: bool = False):
    """One SGD step on the mean cross-entropy; adds this batch's sums to `metrics`;
    `augment`: `train --augment` (data/augment.py)."""
    x, dropout_key = step_input(state.rng, state.step, images, augment)

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, train=True,
                                rngs={"dropout": dropout_key})
        losses = cross_entropy(logits, labels)
        return mean_loss(losses, labels), (losses, logits)

    grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    batch = _batch_metrics(losses, logits, labels)
    return state, jax.tree.map(jnp.add, metrics, batch)


def eval_step(state: TrainState, images, labels, metrics):
    """Test loss and accuracy sums of one batch (dropout off)."""
    logits = state.apply_fn({"params": state.params}, model_input(images), train=False)
    batch = _batch_metrics(cross_entropy(logits, labels), logits, labels)
    return jax.tree.map(jnp.add, metrics, batch)


class Steps(NamedTuple):
    train: Any  # (state, images, labels, metrics) -> (state, metrics); state, metrics donated
    eval: Any  # (state, images, labels, metrics) -> metrics; metrics donated


@functools.cache
def jit_steps(mesh: Mesh, augment: bool = False) -> Steps:
    """The steps compiled for `mesh`: batches sharded over its devices, the rest replicated;
    the train step with `train --augment`'s augmentation or without."""
    repl, data = replicated(mesh), batch_sharding(mesh)
    shardings = (repl, data, data, repl)
    return Steps(
        train=jax.jit(functools.partial(train_step, augment=augment), in_shardings=shardings,
                      out_shardings=(repl, repl), donate_argnums=(0, 3)),
        eval=jax.jit(eval_step, in_shardings=shardings, out_shardings=repl,
                     donate_argnums=(3,)),
    )


def compile_steps(steps: Steps, state, metrics, pipeline):
    """The train step compiled ahead of time for every batch shape of `pipeline`, so that no
    timed step compiles: (a step taking any of those batches, seconds spent compiling, the
    executables by batch size, for their memory analysis).

    The executables are called directly: calling the jitted function instead would compile
    the step again on its first timed call.
    """
    t0 = time.perf_counter()
    compiled = {}
    for size in sorted(pipeline.batch_sizes()):
        images, labels = batch_spec(size)
        compiled[size] = steps.train.lower(state, images, labels, metrics).compile()

    def train(state, images, labels, metrics):
        return compiled[images.shape[0]](state, images, labels, metrics)

    return train, time.perf_counter() - t0, compiled


def check_eval_fits(state: TrainState, pipeline, mesh: Mesh, what: str) -> None:
    """OutOfMemory when the eval step on `pipeline`'s batches cannot fit on this process's
    devices (XLA's memory analysis of it, compiled for the largest batch)."""
    size = max(pipeline.batch_sizes())
    compiled = jit_steps(mesh).eval.lower(state, *batch_spec(size),
                                          empty_metrics(state)).compile()
    memory.check_fits(compiled, what, size, jax.local_devices(), mesh.size)


def evaluate(state: TrainState, pipeline, mesh: Mesh | None = None,
             progress=None) -> dict[str, float]:
    """Test loss and accuracy over every example of `pipeline`, dropout off. `mesh`: the one
    the pipeline was made with (by default, as the pipeline's, every device); `progress` (a
    progress.Progress in examples) follows each finished batch."""
    mesh = make_mesh() if mesh is None else mesh
    eval_step = jit_steps(mesh).eval
    metrics = put_replicated(empty_metrics(state), mesh)
    for batch in pipeline.epoch(0):
        metrics = eval_step(state, batch.images, batch.labels, metrics)
        if progress is not None:
            jax.block_until_ready(metrics)
            progress.update(batch.size)
    m = jax.device_get(metrics)
    return {"loss": float(m["loss_sum"]) / int(m["count"]),
            "acc": int(m["correct"]) / int(m["count"]), "count": int(m["count"])}
