package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// maxIters bounds --iters: the benchmark keeps one latency per iteration
// (issue 11: --iters 2e9 allocated 16 GB up front).
const maxIters = 1_000_000

// threadsFactor caps --threads at threadsFactor × the CPUs this process may
// use: more workers than that only add scheduling cost (issue 11:
// --threads 4096 on 2 cores took over a minute).
const threadsFactor = 4

// capThreads returns the thread count to use for a requested n (0: all
// cores) and, when n was over the cap, the message saying so.
func capThreads(n, cpus int) (int, string) {
	limit := threadsFactor * max(cpus, 1)
	if n > limit {
		return limit, fmt.Sprintf("--threads %d capped at %d (%d × the %d CPUs available)", n, limit, threadsFactor, cpus)
	}
	return n, ""
}

// numCPU is the CPUs this process may run on.
var numCPU = runtime.NumCPU

// printInfo prints the artifact's identity from its manifest (--info).
// batches lists every compiled batch size of a multi-batch artifact.
func printInfo(w io.Writer, man *rt.Manifest, batches ...int) {
	fmt.Fprintf(w, "network:      %s\n", man.Network)
	if b := man.Build; b != nil {
		fmt.Fprintf(w, "built by:     kiln %s\n", b.KilnVersion)
		if b.Source != "" {
			fmt.Fprintf(w, "source:       %s\n", b.Source)
		}
		if b.SourceHash != "" {
			fmt.Fprintf(w, "source hash:  sha256:%s (IR as elaborated)\n", b.SourceHash)
		}
		if b.Procedural {
			fmt.Fprintf(w, "weights:      procedural (not trained: outputs are not predictions)\n")
		} else {
			fmt.Fprintf(w, "weights:      %s sha256:%s\n", b.Weights, b.WeightsHash)
		}
	} else {
		fmt.Fprintf(w, "built by:     unknown (no build record in the manifest)\n")
	}
	fmt.Fprintf(w, "target:       %s, ISAs %s\n", man.Arch, strings.Join(man.ISAs, ", "))
	if len(batches) > 1 {
		fmt.Fprintf(w, "batch:        %s (one program each; a request takes the smallest that fits, padded)\n", joinInts(batches))
	} else {
		fmt.Fprintf(w, "batch:        %d\n", man.Batch)
	}
	fmt.Fprintf(w, "input:        %s %s\n", man.Input.Name, tensor.ShapeString(man.Input.Shape))
	fmt.Fprintf(w, "output:       %s %s\n", man.Output.Name, tensor.ShapeString(man.Output.Shape))
	for _, t := range man.Taps {
		fmt.Fprintf(w, "tap:          %s %s\n", t.Name, tensor.ShapeString(t.Shape))
	}
	if pp := man.Preprocess; pp != nil {
		fmt.Fprintf(w, "preprocess:   %s resize, crop %d (crop_pct %g), mean %g, std %g\n", pp.Interpolation, pp.Size, pp.CropPct, pp.Mean, pp.Std)
	} else {
		fmt.Fprintf(w, "preprocess:   none (--image unavailable)\n")
	}
	if len(man.Labels) > 0 {
		fmt.Fprintf(w, "labels:       %d (%s, ...)\n", len(man.Labels), man.Labels[0])
	} else {
		fmt.Fprintf(w, "labels:       none\n")
	}
	if c := man.Checksums; c != nil {
		fmt.Fprintf(w, "kernels:      %d, sha256:%s\n", len(man.Kernels), c.SharedObject)
		fmt.Fprintf(w, "weights blob: %d bytes, sha256:%s\n", man.WeightsBytes, c.Weights)
	}
}
