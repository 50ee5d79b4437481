package rt_test

import (
	"fmt"
	"log"
	"sync"

	rt "github.com/kiln-dev/kiln/runtime"
)

// Running a network built by `kiln build tiny -o tiny`: find the payload
// appended to the executable (its trailer and manifest digests are
// checked), open it (kernels checked and loaded for this CPU, weights
// checked), run, close. examples/go-embed is the same as a program, run by
// its test against the interpreter.
func Example() {
	a, found, err := rt.FindPayload("tiny") // a built executable or --format lib library
	if err != nil || !found {
		log.Fatalf("no network in tiny: %v", err)
	}
	defer a.Close() // after the Model's Close
	m, err := rt.Open(*a, rt.Options{Threads: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	man := m.Manifest()
	in := make([]float32, numel(man.Input.Shape))   // e.g. 1x3x32x32, row-major NCHW
	out := make([]float32, numel(man.Output.Shape)) // e.g. 1x10
	if err := m.Run(in, out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(man.Network, m.ISA(), out[:3])
}

// Run is safe for concurrent use: each call takes one of the Model's
// sessions (an arena and worker threads), waiting when all are busy
// (Options.MaxSessions).
func ExampleModel_Run_concurrent() {
	a, _, err := rt.FindPayload("tiny")
	if err != nil {
		log.Fatal(err)
	}
	m, err := rt.Open(*a, rt.Options{Threads: 1, MaxSessions: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	man := m.Manifest()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := make([]float32, numel(man.Input.Shape))
			out := make([]float32, numel(man.Output.Shape))
			if err := m.Run(in, out); err != nil {
				log.Print(err)
			}
		}()
	}
	wg.Wait()
}

// An artifact built with several batch sizes (kiln build --batch 1,8,32)
// opens as a MultiModel, which takes any number of samples.
func ExampleOpenMulti() {
	b, found, err := rt.FindBundle("tiny")
	if err != nil || !found {
		log.Fatalf("no network in tiny: %v", err)
	}
	defer b.Close()
	mm, err := rt.OpenMulti(b)
	if err != nil {
		log.Fatal(err)
	}
	defer mm.Close()
	const n = 5 // run as a padded batch of 8 when 1 and 8 are compiled
	in := make([]float32, n*mm.InRow())
	out := make([]float32, n*mm.OutRow())
	if err := mm.Run(in, out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(mm.Batches(), out[:mm.OutRow()])
}

// Mutable parameters (Manifest.State: running statistics, optimizer state)
// persist across runs of a Model; State reads and SetState restores them.
func ExampleModel_State() {
	a, _, err := rt.FindPayload("step") // e.g. a compiled training step
	if err != nil {
		log.Fatal(err)
	}
	m, err := rt.Open(*a)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	for _, st := range m.Manifest().State {
		v, _ := m.State(st.Name)
		fmt.Println(st.Name, len(v))
	}
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}
