"""The train state and the pure, jitted train and eval steps (d2l's train_ch6 inner loop)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from .input_pipeline import model_input
from .model import AlexNet, init_params
from .parallel import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
    """Everything a step changes, and so everything a checkpoint holds."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # dropout keys are fold_in(rng, step)
    apply_fn: Any = flax.struct.field(pytree_node=False)
    tx: Any = flax.struct.field(pytree_node=False)


def make_optimizer(lr: float) -> optax.GradientTransformation:
    """d2l: plain SGD, no momentum, no weight decay."""
    return optax.sgd(lr)


def create_train_state(model: AlexNet, seed: int, lr: float, params=None) -> TrainState:
    """A fresh state: d2l's init from `seed`, or the given params (a converted checkpoint)."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    if params is None:
        params = init_params(model, init_key)
    params = jax.tree.map(lambda p: jnp.asarray(p, model.param_dtype), params)
    tx = make_optimizer(lr)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(dropout_key),
        apply_fn=model.apply,
        tx=tx,
    )


def cross_entropy(logits, labels):
    """Per-example cross-entropy (d2l's nn.CrossEntropyLoss, before its mean); 0 for padding
    examples (label -1), so sums over a padded batch are sums over its real examples."""
    real = labels >= 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.where(real, losses, 0.0)


def empty_metrics() -> dict[str, jax.Array]:
    return {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32)}


def _batch_metrics(losses, logits, labels) -> dict[str, jax.Array]:
    """Sums over the real examples of a batch (padding examples have label -1)."""
    real = labels >= 0
    return {
        "loss_sum": jnp.sum(losses.astype(jnp.float32)),
        "correct": jnp.sum(real & (jnp.argmax(logits, -1) == labels)).astype(jnp.int32),
        "count": jnp.sum(real).astype(jnp.int32),
    }


def mean_loss(losses, labels):
    """d2l's mean cross-entropy over the real examples (a padded batch has fewer)."""
    return jnp.sum(losses) / jnp.maximum(jnp.sum(labels >= 0), 1)


def train_step(state: TrainState, images, labels, metrics):
    """One SGD step on the mean cross-entropy; adds this batch's sums to `metrics`."""
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    x = model_input(images)

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, train=True,
                                rngs={"dropout": dropout_key})
        losses = cross_entropy(logits, labels)
        return mean_loss(losses, labels), (losses, logits)

    grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
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
def jit_steps(mesh: Mesh) -> Steps:
    """The steps compiled for `mesh`: batches sharded over its devices, the rest replicated."""
    repl, data = replicated(mesh), batch_sharding(mesh)
    shardings = (repl, data, data, repl)
    return Steps(
        train=jax.jit(train_step, in_shardings=shardings, out_shardings=(repl, repl),
                      donate_argnums=(0, 3)),
        eval=jax.jit(eval_step, in_shardings=shardings, out_shardings=repl,
                     donate_argnums=(3,)),
    )
