#!/usr/bin/env bash
# tests/mpi/test_mpi_train_small.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - test_mpi_train.sh on
# configs/small.toml (16 experts, 2 dense + 4 MoE layers, MTP): the same layouts, checks and
# tolerances. About two minutes on 2 cores: labelled slow (release suite only).
DSTRAIN_MPI_CONFIG=small exec bash "$(dirname "$0")/test_mpi_train.sh" "$@"
