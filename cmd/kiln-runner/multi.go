package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// maxInputFloats bounds the samples --input may hold beyond the largest
// compiled batch: 1 GiB of float32 (docs/LIMITS.md). Up to the largest
// batch is always accepted.
const maxInputFloats = 1 << 28

// runInput runs the samples of the .npy file path: any leading batch n >= 1
// whose per-sample shape is the network's. rt.MultiModel runs them on the
// smallest compiled batch >= n, padded with zeros, or in chunks of the
// largest. It returns the output (or the tap tapIdx >= 0) for the n
// samples.
func runInput(mm *rt.MultiModel, man *rt.Manifest, path string, tapIdx int) (*tensor.Tensor, error) {
	maxRows := max(mm.MaxBatch(), maxInputFloats/mm.InRow())
	x, err := tensor.ReadNPYFileLimit(path, tensor.NPYLimit(maxRows*mm.InRow()))
	if err != nil {
		return nil, err
	}
	sample := man.Input.Shape[1:]
	if len(x.Shape) != len(man.Input.Shape) || !equalShape(x.Shape[1:], sample) || x.Shape[0] < 1 {
		return nil, fmt.Errorf("input %s: shape %s, this binary takes N×%s (N samples; compiled batches %s)",
			path, tensor.ShapeString(x.Shape), tensor.ShapeString(sample), joinInts(mm.Batches()))
	}
	n := x.Shape[0]
	if n > maxRows {
		return nil, fmt.Errorf("input %s: %d samples, at most %d", path, n, maxRows)
	}
	out := make([]float32, n*mm.OutRow())
	taps := make([][]float32, len(man.Taps))
	if tapIdx >= 0 {
		taps[tapIdx] = make([]float32, n*numel(man.Taps[tapIdx].Shape[1:]))
	}
	if err := mm.RunTaps(x.Data, out, taps); err != nil {
		return nil, err
	}
	if tapIdx >= 0 {
		return &tensor.Tensor{Shape: withBatch(n, man.Taps[tapIdx].Shape), Data: taps[tapIdx]}, nil
	}
	return &tensor.Tensor{Shape: withBatch(n, man.Output.Shape), Data: out}, nil
}

// withBatch is shape with its leading dimension set to n.
func withBatch(n int, shape []int) []int {
	s := append([]int{n}, shape[1:]...)
	return s
}

func joinInts(s []int) string {
	var p []string
	for _, n := range s {
		p = append(p, strconv.Itoa(n))
	}
	return strings.Join(p, ",")
}
