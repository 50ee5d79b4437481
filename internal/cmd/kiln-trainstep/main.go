// Command kiln-trainstep runs a compiled training step (codegen/lower's
// LowerTraining, compiled for any ISA) on the machine it runs on, so that a
// step compiled for another architecture can be checked against the
// interpreter: tests/arm64_train_test.go cross-builds it for arm64 and runs
// it under qemu-aarch64-static on NEON kernels compiled by the host.
//
// Usage:
//
//	kiln-trainstep DIR
//
// DIR holds manifest.json (the rt.Manifest, kernel list included),
// step.so, weights.bin (the weights blob) and steps.safetensors, whose
// tensors are named "<k>/input" (the images of step k, Manifest.Input's
// shape) and "<k>/<state>" (a state entry set with Model.SetState before
// step k: the one-hot targets, the dropout seed), k = 0, 1, …. It runs
// the steps in order on one Model, so each starts from the state the
// previous one left, and writes DIR/state<k>.safetensors holding every
// Manifest.State entry (parameters, buffers, optimizer state, kiln.loss)
// after step k. It links only the runtime and ir/tensor.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kiln-trainstep DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "kiln-trainstep: %v\n", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	mb, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}
	var man rt.Manifest
	if err := json.Unmarshal(mb, &man); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, "manifest.json"), err)
	}
	w, err := os.ReadFile(filepath.Join(dir, "weights.bin"))
	if err != nil {
		return err
	}
	steps, err := tensor.ReadSafetensorsFile(filepath.Join(dir, "steps.safetensors"))
	if err != nil {
		return err
	}
	m, err := rt.Open(rt.Artifact{Manifest: man, SharedObjectPath: filepath.Join(dir, "step.so"), Weights: w},
		rt.Options{Threads: 1, MaxSessions: 1})
	if err != nil {
		return err
	}
	defer m.Close()
	n := 1
	for _, d := range man.Output.Shape {
		n *= d
	}
	out := make([]float32, n)
	for k := 0; ; k++ {
		prefix := fmt.Sprintf("%d/", k)
		x, ok := steps.Tensors[prefix+"input"]
		if !ok {
			if k == 0 {
				return fmt.Errorf("steps.safetensors has no tensor 0/input")
			}
			return nil
		}
		for name, v := range steps.Tensors {
			if st, ok := strings.CutPrefix(name, prefix); ok && st != "input" {
				if err := m.SetState(st, v.Data); err != nil {
					return fmt.Errorf("step %d: %w", k, err)
				}
			}
		}
		if err := m.Run(x.Data, out); err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		res := map[string]*tensor.Tensor{}
		for _, st := range man.State {
			v, _ := m.State(st.Name)
			res[st.Name] = &tensor.Tensor{Shape: append([]int(nil), st.Shape...), Data: v}
		}
		if err := tensor.WriteSafetensorsFile(filepath.Join(dir, fmt.Sprintf("state%d.safetensors", k)), res, nil); err != nil {
			return err
		}
	}
}
