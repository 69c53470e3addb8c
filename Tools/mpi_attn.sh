#!/usr/bin/env bash
# check.py's `attn` for the distributed commands: `attn run|grad ARGS` runs as
# `mpirun -np $DIST_RANKS $DIST_ATTN dist run|grad ARGS` (every rank reads the inputs, rank 0 writes).
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun --quiet --oversubscribe --bind-to none -np "${DIST_RANKS:-2}" "${DIST_ATTN:?set DIST_ATTN to the attn binary}" dist "$@"
