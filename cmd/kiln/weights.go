package main

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
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
	return loadWeightsStrip(g, path, "")
}

// loadWeightsStrip is loadWeights that first removes prefix from every
// checkpoint name starting with it (--strip-prefix). When names do not match
// and a prefix on them is the reason (a state dict saved from
// nn.DataParallel has "module." on every key), the error says which
// --strip-prefix would fix it (tensor.PrefixHint).
func loadWeightsStrip(g *ir.Graph, path, prefix string) (map[string]*tensor.Tensor, error) {
	params := g.Params()
	if path == "" {
		if prefix != "" {
			return nil, usagef("--strip-prefix needs --weights")
		}
		return generateWeights(params)
	}
	// Read only the data of tensors the network needs, by name and shape
	// from the header: an unexpected tensor of any declared size is
	// refused without being read (issue 11 item 2).
	shapes := make(map[string][]int, len(params))
	for _, p := range params {
		shapes[p.Name] = p.Type.Shape
	}
	f, err := tensor.ReadSafetensorsFileSelect(path, func(h tensor.SafetensorsHeader) bool {
		s, ok := shapes[strings.TrimPrefix(h.Name, prefix)]
		return ok && slices.Equal(s, h.Shape)
	})
	if err != nil {
		return nil, err
	}
	ts, err := tensor.StripPrefix(path, f.Tensors, prefix)
	if err != nil {
		return nil, err
	}
	unread := make([]tensor.SafetensorsHeader, len(f.Unread))
	for i, h := range f.Unread {
		h.Name = strings.TrimPrefix(h.Name, prefix)
		unread[i] = h
	}
	variances := varianceParams(g)
	specs := make([]tensor.Spec, len(params))
	want := make([]string, len(params))
	for i, p := range params {
		specs[i] = tensor.Spec{Name: p.Name, Shape: p.Type.Shape, NonNegative: variances[p.Name]}
		want[i] = p.Name
	}
	if err := tensor.CheckWeightsUnread(path, specs, ts, unread); err != nil {
		var we *tensor.WeightsError
		if errors.As(err, &we) {
			names := make([]string, 0, len(ts)+len(unread))
			for n := range ts {
				names = append(names, n)
			}
			for _, h := range unread {
				names = append(names, h.Name)
			}
			if p, n := tensor.PrefixHint(names, want); p != "" {
				flag := "--strip-prefix " + p
				if prefix != "" {
					flag = "--strip-prefix " + prefix + p
				}
				we.Hint = fmt.Sprintf("the checkpoint's names carry the prefix %q: with %s, %d of the network's %d tensors match by name", p, flag, n, len(want))
			}
		}
		return nil, err
	}
	return ts, nil
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

// varianceParams returns the names of the params of g that are used as a BatchNorm
// running variance, which must not be negative (tensor.Spec.NonNegative).
// A param is one when some node takes it as the operand the op table names
// "running_var" (batchnorm's 5th operand, fold_bn_weight's 3rd,
// fold_bn_bias's 4th), so the check follows the graph rather than the
// checkpoint key: a variance is found whatever it is called, and a tensor
// merely named "...running_var" that is no variance is not constrained.
func varianceParams(g *ir.Graph) map[string]bool {
	out := map[string]bool{}
	for _, n := range g.Nodes {
		def := ir.Lookup(n.Op)
		if def == nil {
			continue
		}
		for i, a := range n.Args {
			if i < len(def.Operands) && def.Operands[i] == "running_var" && g.Nodes[a].Op == ir.OpParam {
				out[g.Nodes[a].Name] = true
			}
		}
	}
	return out
}
