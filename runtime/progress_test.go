package rt

import (
	"fmt"
	"testing"
)

// TestRunProgress: RunProgress runs like Run on 1 and 2 threads, reports
// increasing kernel counts ending with the kernel count (the test library
// keeps no completion word, so that is its only report), runs like Run
// without a callback, and checks lengths as Run does. (The generated
// drivers' progress is tested in codegen/lower, TestRunProgressOutputsFinal.)
func TestRunProgress(t *testing.T) {
	so := buildLib(t)
	for _, threads := range []int{1, 2} {
		t.Run(fmt.Sprint(threads), func(t *testing.T) {
			m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{Threads: threads})
			nk := len(m.Manifest().Kernels)
			for seed := range 3 {
				in, out := testInput(seed), make([]float32, testN+1)
				var dones []int
				err := m.RunProgress(in, out, 0, func(done int, arena []float32) {
					if len(arena) != int(m.Manifest().ArenaBytes/4) {
						t.Errorf("arena of %d floats, want %d", len(arena), m.Manifest().ArenaBytes/4)
					}
					dones = append(dones, done)
				})
				if err != nil {
					t.Fatal(err)
				}
				checkOutput(t, in, out, m.ISA())
				if len(dones) == 0 || dones[len(dones)-1] != nk {
					t.Errorf("reported kernel counts %v, want them to end with %d", dones, nk)
				}
				for i := 1; i < len(dones); i++ {
					if dones[i] <= dones[i-1] {
						t.Errorf("reported kernel counts %v do not increase", dones)
					}
				}
			}
			in, out := testInput(7), make([]float32, testN+1)
			if err := m.RunProgress(in, out, 0, nil); err != nil {
				t.Fatal(err)
			}
			checkOutput(t, in, out, m.ISA())
			if err := m.RunProgress(in[:1], out, 0, func(int, []float32) { t.Error("progress called for a run refused") }); err == nil {
				t.Error("RunProgress accepted a short input")
			}
		})
	}
}
