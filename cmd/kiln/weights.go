package main

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// loadWeights reads a safetensors checkpoint and checks it against the
// network's parameters (every missing, unexpected, mis-shaped or non-finite
// tensor is reported in one error). With path "" it generates the documented
// deterministic procedural weights instead (tensor.Generate, keyed by the full
// parameter name; see ../shared/fixtures/README.md §1).
func loadWeights(g *ir.Graph, path string) (map[string]*tensor.Tensor, error) {
	params := g.Params()
	if path == "" {
		return generateWeights(params)
	}
	f, err := tensor.ReadSafetensorsFile(path)
	if err != nil {
		return nil, err
	}
	specs := make([]tensor.Spec, len(params))
	for i, p := range params {
		specs[i] = tensor.Spec{Name: p.Name, Shape: p.Type.Shape}
	}
	if err := tensor.CheckWeights(path, specs, f.Tensors); err != nil {
		return nil, err
	}
	return f.Tensors, nil
}

// generateWeights builds every parameter with tensor.Generate, in parallel.
func generateWeights(params []*ir.Node) (map[string]*tensor.Tensor, error) {
	out := make(map[string]*tensor.Tensor, len(params))
	var mu sync.Mutex
	var firstErr error
	work := make(chan *ir.Node)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				t, err := tensor.Generate(p.Name, p.Type.Shape)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("procedural weights: %w", err)
				}
				out[p.Name] = t
				mu.Unlock()
			}
		}()
	}
	for _, p := range params {
		work <- p
	}
	close(work)
	wg.Wait()
	return out, firstErr
}
