// Command go-embed shows how a Go program runs a network compiled by kiln
// through the runtime's Go API (package rt, github.com/kiln-dev/kiln/runtime)
// instead of the built executable's command line:
//
//	kiln build tiny --batch 2 -o tiny        # or --format lib -o libtiny.so
//	go run ./examples/go-embed tiny x.npy y.npy
//
// It opens the network appended to ARTIFACT (a built executable or library),
// runs it once on the float32 .npy input and writes the output as .npy,
// printing the network, the instruction set chosen and the output's shape.
// The steps are the whole API a caller needs: FindBundle reads and checks
// the payload, OpenMulti loads the kernels and verifies the weights, Run is
// safe to call from many goroutines, Close releases everything.
package main

import (
	"fmt"
	"os"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go-embed ARTIFACT IN.npy OUT.npy")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "go-embed:", err)
		os.Exit(1)
	}
}

func run(artifact, inPath, outPath string) error {
	// The payload: manifest(s), kernels, weights; digests checked.
	bundle, found, err := rt.FindBundle(artifact)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s carries no network built by kiln build", artifact)
	}
	defer bundle.Close()
	// Load the kernels for this CPU, verify the weights' SHA-256, start
	// the worker threads (all cores; rt.Options tunes this).
	model, err := rt.OpenMulti(bundle, rt.Options{})
	if err != nil {
		return err
	}
	defer model.Close()
	man := model.Largest().Manifest()
	x, err := tensor.ReadNPYFile(inPath)
	if err != nil {
		return err
	}
	// Any number of samples: the smallest compiled batch that fits is
	// used, padded; more samples run in chunks.
	n := len(x.Data) / model.InRow()
	y := tensor.New(append([]int{n}, man.Output.Shape[1:]...)...)
	if err := model.Run(x.Data, y.Data); err != nil {
		return err
	}
	fmt.Printf("%s on %s: %d samples -> %s\n", man.Network, model.Largest().ISA(), n, tensor.ShapeString(y.Shape))
	return tensor.WriteNPYFile(outPath, y)
}
