"""One process of a data-parallel test run: train, and save this process's own params.

python parallel_worker.py OUT_PREFIX CONFIG_JSON EPOCHS [COORDINATOR NUM_PROCESSES PROCESS_ID]

EPOCHS is a comma-separated list: the run is trained (resumed) to each in turn and
OUT_PREFIX_e{EPOCHS}.npz written after each.
"""

import json
import sys

import numpy as np

from alexnet_jax.runtime.parallel import init_distributed

if __name__ == "__main__":
    prefix, settings, epochs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
    if len(sys.argv) > 4:
        init_distributed(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    import jax

    from alexnet_jax.training.loop import train_and_evaluate
    from alexnet_jax.training.run_dir import TrainConfig

    for epoch in epochs:
        state, result = train_and_evaluate(TrainConfig(**{**settings, "epochs": int(epoch)}))
        # This process's copy of the replicated params, read from its own first device.
        flat = {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
                for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
        np.savez(f"{prefix}_e{epoch}.npz", devices=jax.device_count(),
                 processes=jax.process_count(), step=int(state.step),
                 train_loss=result["train_loss"], train_acc=result["train_acc"],
                 test_acc=result["test_acc"], **flat)
