#!/bin/bash
# d2l's run in bfloat16: `alexnet-jax train`'s defaults (10 epochs, batch 128, lr 0.01, dropout
# 0.5, all 60,000 / 10,000 images, seed 0) with --dtype bfloat16, in a work dir outside the
# clone. The extra checkpoints only make it resumable within an epoch. Stopped (Ctrl-C or
# SIGTERM), the same command on the same work dir resumes it.
alexnet-jax train --workdir /work/d2l-bf16/run --manual-dir /work/shared/data/fashion-mnist \
  --source idx --dtype bfloat16 --checkpoint-every-steps 200 2>&1 | tee -a /work/d2l-bf16/console.log
