package lower

import (
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

// Progress of a running training step.
//
// A data-parallel trainer starts all-reducing a bucket of gradients as
// soon as they are computed, while the rest of backward still runs (as
// PyTorch's DistributedDataParallel does: Li et al. 2020, "PyTorch
// Distributed", section 3.2.3). A compiled step is one native call, so it
// tells the caller how far it is through two things:
//
//   - the driver's completion word (driver.go: the epoch of the kernel in
//     progress, inference number × kernel count + kernel index), which a
//     multi-threaded run keeps anyway and which a training step's driver
//     (Program.progress) also stores, with release order, after each
//     kernel of a single-threaded run; the runtime turns it into a count
//     of complete kernels (rt.Model.RunProgress);
//   - Program.OutputReady, computed here: for each graph output, the
//     number of kernels after which its value is final.
//
// The same C driver serves every target (AVX-512, AVX2, NEON), so the
// signal is target-independent; inference programs keep their driver.

// outputReady returns, for each output of g, 1 + the index of the last
// kernel in specs that writes the output's arena buffer (its producer, a
// multi-result producer writing it as one of its results, a copy into it,
// or a later value aliasing it), or len(specs) when none does. No later
// kernel can write that memory: the planner keeps an output's buffer live
// to the end of the step (passes.MakePlan), so no other buffer placed over
// it is live after its first value is written.
func outputReady(g *ir.Graph, plan *passes.Plan, specs []kernelSpec) []int {
	writes := map[int][]int{} // node -> the buffers its kernels write
	for i, n := range g.Nodes {
		b := plan.BufferOf[i]
		if b < 0 {
			continue
		}
		if n.Op == ir.OpResult {
			writes[n.Args[0]] = append(writes[n.Args[0]], b)
		} else {
			writes[i] = append(writes[i], b)
		}
	}
	last := map[int]int{} // buffer -> 1 + the last kernel writing it
	for k, s := range specs {
		for _, n := range append([]int{s.node}, s.also...) {
			for _, b := range writes[n] {
				last[b] = k + 1
			}
		}
	}
	ready := make([]int, len(g.Outputs))
	for k, o := range g.Outputs {
		ready[k] = len(specs)
		if r, ok := last[plan.BufferOf[o]]; ok && plan.BufferOf[o] >= 0 {
			ready[k] = r
		}
	}
	return ready
}
