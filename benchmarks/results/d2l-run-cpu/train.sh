#!/bin/bash
# d2l's run: `alexnet-jax train`'s defaults (10 epochs, batch 128, lr 0.01, dropout 0.5, all
# 60,000 / 10,000 images, float32, seed 0), in a work dir outside the clone. The extra
# checkpoints only make it resumable within an epoch; they change nothing computed. Stopped
# (Ctrl-C), the same command on the same work dir resumes it.
alexnet-jax train --workdir /work/d2l-run/run --manual-dir /work/shared/data/fashion-mnist \
  --checkpoint-every-steps 200 2>&1 | tee -a /work/d2l-run/console.log
