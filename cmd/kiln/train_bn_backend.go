package main

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/train/trainer"
)

// bnBackend returns the backend kiln train runs the steps of net on, and a
// one-line note for stderr when it is not the backend asked for.
//
// The compiled backend lowers plain training-mode BatchNorm only
// (codegen/lower refuses batchnorm_train with the ghost or sync
// attribute), so a run whose step graph carries one falls back to the
// interpreter instead of failing on an internal node:
//   - --ghost-batch K with K smaller than the per-rank batch (K equal to
//     it is plain BatchNorm, which train.Forward emits then);
//   - --sync-bn on more than one rank (one rank is plain BatchNorm): the
//     per-channel sums are all-reduced in the middle of forward and of
//     backward, which one native call of the whole step cannot do.
//
// A network without BatchNorm has neither and keeps the compiled backend.
func bnBackend(backend string, net *ir.Graph, s trainer.Settings, ranks int) (string, string) {
	if backend != "compiled" {
		return backend, ""
	}
	hasBN := false
	for _, n := range net.Nodes {
		if n.Op == ir.OpBatchNorm {
			hasBN = true
			break
		}
	}
	switch {
	case !hasBN:
		return backend, ""
	case s.GhostBatch > 0 && s.GhostBatch < s.Batch:
		return "interp", fmt.Sprintf("kiln train: --ghost-batch %d runs on the interpreter (the compiled backend has plain BatchNorm only); training with --backend interp", s.GhostBatch)
	case s.SyncBN && ranks > 1:
		return "interp", "kiln train: --sync-bn runs on the interpreter (synchronized BatchNorm all-reduces its statistics inside forward and backward, which the compiled step cannot); training with --backend interp"
	}
	return backend, ""
}
