package experiment

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

// evalEnsembles evaluates each of ex.Ensembles on the test set: the
// softmax of every member's final weights (trainer.WeightsFile of its run)
// averaged over the members, top-1 over the argmax (ties to the lower
// class, a NaN never counts), as in the paper's ensembles (section 4:
// "three residual and one Inception-v4"). Members whose run is missing or
// diverged are left out and named in the row's status; an ensemble left
// with fewer than two members is skipped.
func evalEnsembles(ex *Experiment, results []*Result, batch int, te data.Dataset, opts Options) ([]Row, error) {
	var rows []Row
	for _, spec := range ex.Ensembles {
		var probs [][]float64 // per member: test items × classes
		var missing []string
		for _, m := range spec.Members {
			r := findResult(results, m)
			if r == nil || r.Status != "ok" {
				missing = append(missing, fmt.Sprintf("%s seed %d", m.Net, m.Seed))
				continue
			}
			p, err := memberProbs(ex, r, batch, te, opts)
			if err != nil {
				return nil, err
			}
			probs = append(probs, p)
		}
		if len(probs) < 2 {
			fmt.Fprintf(opts.Log, "ensemble %s: skipped, %d of %d members trained\n", spec.Label, len(probs), len(spec.Members))
			continue
		}
		classes := te.Classes()
		correct := 0
		for i := range te.Len() {
			best, bi := math.Inf(-1), -1
			for c := range classes {
				s := 0.0
				for _, p := range probs {
					s += p[i*classes+c]
				}
				if s > best {
					best, bi = s, c
				}
			}
			if bi == te.Label(i) {
				correct++
			}
		}
		acc := 100 * float64(correct) / float64(te.Len())
		status := "ok"
		if len(missing) > 0 {
			status = "without " + strings.Join(missing, ", ")
		}
		row := Row{Net: "ensemble: " + spec.Label, Runs: len(probs), Final: Stat{Mean: acc, SD: nan, N: 1, Of: 1}, Dead: Stat{Mean: nan, SD: nan}, Seconds: Stat{Mean: nan, SD: nan}, Status: status}
		for range ex.Thresholds {
			row.ToEpochs = append(row.ToEpochs, Stat{Mean: nan, SD: nan})
			row.ToSeconds = append(row.ToSeconds, Stat{Mean: nan, SD: nan})
		}
		fmt.Fprintf(opts.Log, "ensemble %s: test top-1 %.2f%%\n", spec.Label, acc)
		rows = append(rows, row)
	}
	return rows, nil
}

func findResult(results []*Result, m Member) *Result {
	for _, r := range results {
		if r.Net == m.Net && r.Seed == m.Seed {
			return r
		}
	}
	return nil
}

// memberProbs returns the softmax of r's final model over the test set.
func memberProbs(ex *Experiment, r *Result, batch int, te data.Dataset, opts Options) ([]float64, error) {
	var net *Net
	for i := range ex.Nets {
		if ex.Nets[i].Label == r.Net {
			net = &ex.Nets[i]
		}
	}
	if net == nil {
		return nil, fmt.Errorf("ensemble: no network %s in experiment %s", r.Net, ex.Name)
	}
	n := *net
	if opts.Quick {
		n = quickNet(n)
	}
	g, err := n.Load(batch)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(r.Dir, trainer.WeightsFile)
	f, err := tensor.ReadSafetensorsFile(path)
	if err != nil {
		return nil, err
	}
	shape := te.Shape()
	per := shape[0] * shape[1] * shape[2]
	classes := te.Classes()
	x := tensor.New(batch, shape[0], shape[1], shape[2])
	out := make([]float64, te.Len()*classes)
	input := g.Inputs()[0].Name
	for b0 := 0; b0 < te.Len(); b0 += batch {
		m := min(batch, te.Len()-b0)
		clear(x.Data)
		for b := range m {
			if err := te.Image(b0+b, x.Data[b*per:(b+1)*per]); err != nil {
				return nil, err
			}
		}
		y, err := opts.Exec.Infer(g, f.Tensors, map[string]*tensor.Tensor{input: x})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(y.Shape) != 2 || y.Shape[1] != classes {
			return nil, fmt.Errorf("%s: output %s, want (%d, %d)", path, tensor.ShapeString(y.Shape), batch, classes)
		}
		for b := range m {
			row := y.Data[b*classes : (b+1)*classes]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = math.Max(mx, float64(v))
			}
			sum := 0.0
			for _, v := range row {
				sum += math.Exp(float64(v) - mx)
			}
			for c, v := range row {
				out[(b0+b)*classes+c] = math.Exp(float64(v)-mx) / sum
			}
		}
	}
	return out, nil
}
