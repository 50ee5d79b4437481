package experiment

import (
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// PrecisionOptions control PrecisionStudy.
type PrecisionOptions struct {
	Out    string
	Data   string // "fashion-mnist" or an IDX directory
	Batch  int    // images in the fixed batch (default 32)
	Seeds  int    // initial-weight seeds 1..Seeds (default 3)
	Depths []int  // depth multipliers (default 1, 2, 4)
	Log    io.Writer
}

// TensorErr is one gradient tensor's float32-vs-float64 disagreement.
type TensorErr struct {
	Net    string
	Depth  int
	Seed   uint64
	Tensor string
	Numel  int
	MaxRef float64 // max |g64|
	Err    float64 // max |g32 − g64| / max |g64|
	// ErrPerturbed is the control: max |g64' − g64| / max |g64| with g64'
	// the float64 gradient at weights perturbed by float32's rounding size.
	ErrPerturbed float64
}

// PrecisionRow aggregates one (network, depth) over tensors and seeds.
type PrecisionRow struct {
	Net    string
	Depth  int
	Params int
	// Median and Max are, per seed, the median and the maximum of Err over
	// the gradient tensors; the row holds their mean, min and max over the
	// seeds.
	Median, Max [3]float64 // mean, min, max over seeds
	// PMedian and PMax are the same for the control (ErrPerturbed).
	PMedian, PMax [3]float64
	Over1e3       float64 // fraction of tensors (all seeds) with Err > 1e-3
	Worst         string  // the tensor with the largest Err (any seed)
	LossErr       float64 // max over seeds of |loss32 − loss64| / |loss64|
}

// PrecisionStudy measures how far Kiln's float32 gradients are from
// float64 ones for the two mini networks at several depths and initial
// weights: for each network, depth and seed it builds the training step
// graph (train.Step, label smoothing 0.1), initialises the weights with
// InitWeights(seed) (PyTorch's default initialisation), takes the first
// Batch Fashion-MNIST training images (normalised as the trainer does, no
// augmentation), runs the graph in the float32 interpreter (ir/interp),
// evaluates the same graph in float64 (Eval64), and computes for every
// learnable parameter's gradient the fixtures' error measure
// max|g32 − g64| / max|g64| (shared/fixtures/training/README.md). It
// writes OUT/precision_tensors.csv (one row per tensor) and
// OUT/precision.md, renders OUT/precision.png (PrecisionPlot), and returns
// the rows.
func PrecisionStudy(opts PrecisionOptions) ([]PrecisionRow, []TensorErr, error) {
	if opts.Batch <= 0 {
		opts.Batch = 32
	}
	if opts.Seeds <= 0 {
		opts.Seeds = 3
	}
	if len(opts.Depths) == 0 {
		opts.Depths = []int{1, 2, 4}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	dir := opts.Data
	if dir == "" || dir == "fashion-mnist" {
		dir = data.FashionMNISTDir
	}
	tr, _, err := data.LoadFashionMNIST(dir, opts.Batch, 1)
	if err != nil {
		return nil, nil, err
	}
	if tr.Len() < opts.Batch {
		return nil, nil, fmt.Errorf("%s: %d training images, fewer than the batch of %d", dir, tr.Len(), opts.Batch)
	}
	shape := tr.Shape()
	per := shape[0] * shape[1] * shape[2]
	x := tensor.New(opts.Batch, shape[0], shape[1], shape[2])
	target := tensor.New(opts.Batch, tr.Classes())
	for b := range opts.Batch {
		if err := tr.Image(b, x.Data[b*per:(b+1)*per]); err != nil {
			return nil, nil, err
		}
		target.Data[b*tr.Classes()+tr.Label(b)] = 1
	}
	var rows []PrecisionRow
	var all []TensorErr
	for _, file := range []string{"mini_inception.kiln", "mini_inception_resnet.kiln"} {
		for _, d := range opts.Depths {
			net := Net{Label: strings.TrimSuffix(file, ".kiln"), File: file, Params: map[string]float64{"depth": float64(d)}}
			row := PrecisionRow{Net: net.Label, Depth: d}
			var meds, maxs, pmeds, pmaxs []float64
			var errs []TensorErr
			for s := 1; s <= opts.Seeds; s++ {
				t0 := time.Now()
				te, lossErr, params, err := gradErrors(net, d, uint64(s), x, target)
				if err != nil {
					return nil, nil, err
				}
				row.Params = params
				row.LossErr = math.Max(row.LossErr, lossErr)
				var es []float64
				for _, e := range te {
					es = append(es, e.Err)
				}
				sort.Float64s(es)
				meds = append(meds, median(es))
				maxs = append(maxs, es[len(es)-1])
				var ps []float64
				for _, e := range te {
					ps = append(ps, e.ErrPerturbed)
				}
				sort.Float64s(ps)
				pmeds = append(pmeds, median(ps))
				pmaxs = append(pmaxs, ps[len(ps)-1])
				errs = append(errs, te...)
				fmt.Fprintf(opts.Log, "%s depth %d seed %d: median %.3g, max %.3g over %d gradients; control median %.3g, max %.3g (%.1f s)\n",
					net.Label, d, s, median(es), es[len(es)-1], len(es), median(ps), ps[len(ps)-1], time.Since(t0).Seconds())
			}
			row.Median, row.Max = spread(meds), spread(maxs)
			row.PMedian, row.PMax = spread(pmeds), spread(pmaxs)
			worst, over := errs[0], 0
			for _, e := range errs {
				if e.Err > worst.Err {
					worst = e
				}
				if e.Err > 1e-3 {
					over++
				}
			}
			row.Worst = fmt.Sprintf("%s (seed %d, %.3g)", worst.Tensor, worst.Seed, worst.Err)
			row.Over1e3 = float64(over) / float64(len(errs))
			rows = append(rows, row)
			all = append(all, errs...)
		}
	}
	if opts.Out != "" {
		if err := writePrecision(opts, rows, all); err != nil {
			return nil, nil, err
		}
		if err := PrecisionPlot(opts.Out, all); err != nil {
			return nil, nil, err
		}
	}
	return rows, all, nil
}

// gradErrors runs one configuration and returns the error of every
// learnable parameter's gradient (graph order), the loss's relative error
// and the number of learnable parameters.
func gradErrors(net Net, depth int, seed uint64, x, target *tensor.Tensor) ([]TensorErr, float64, int, error) {
	g, err := net.Load(x.Shape[0])
	if err != nil {
		return nil, 0, 0, err
	}
	init, err := InitWeights(g, seed)
	if err != nil {
		return nil, 0, 0, err
	}
	sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.Optimizer{Kind: "sgd", LR: 0.1}})
	if err != nil {
		return nil, 0, 0, err
	}
	params := map[string]*tensor.Tensor{}
	for k, v := range init {
		params[k] = v
	}
	for _, s := range sg.State {
		params[s.Name] = tensor.New(s.Shape...)
	}
	inputs := map[string]*tensor.Tensor{g.Inputs()[0].Name: x, sg.Target: target}
	var names []string
	var keep []int
	nparams := 0
	for _, p := range g.Params() {
		if d, ok := sg.Grads[p.Name]; ok {
			names = append(names, p.Name)
			keep = append(keep, d)
			nparams += numel(p.Type.Shape)
		}
	}
	loss := sg.Graph.Outputs[0]
	r32, err := interp.Run(sg.Graph, params, inputs, interp.Options{Keep: keep})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s depth %d: float32: %w", net.Label, depth, err)
	}
	r64, err := Eval64(sg.Graph, params, inputs, append(slices.Clone(keep), loss))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s depth %d: float64: %w", net.Label, depth, err)
	}
	// The control: float64 again, with every learnable parameter
	// multiplied by (1 + u·2⁻²⁴), u uniform in [−1, 1) (seeded): a
	// perturbation of the size of float32's rounding of the weights, in
	// exact-enough arithmetic. Where the gradients move as much under this
	// as under float32 arithmetic, their sensitivity to the weights, not
	// float32 as such, is the cause.
	learn := map[string]bool{}
	for _, n := range names {
		learn[n] = true
	}
	rp, err := eval64Graph(sg.Graph, params, inputs, slices.Clone(keep), func(name string, d []float64) {
		if !learn[name] {
			return
		}
		h := fnv.New64a()
		h.Write([]byte(name))
		k := h.Sum64()
		for i := range d {
			u := float64(data.Hash(seed, initPurpose+1, k, uint64(i))>>11)/(1<<53)*2 - 1
			d[i] *= 1 + u*0x1p-24
		}
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s depth %d: float64, perturbed: %w", net.Label, depth, err)
	}
	l32, l64 := float64(r32.Outputs[0].Data[0]), r64[loss].d[0]
	var out []TensorErr
	for i, name := range names {
		b := r64[keep[i]].d
		a := make([]float64, len(b))
		for j, v := range r32.Values[keep[i]].Data {
			a[j] = float64(v)
		}
		ref := 0.0
		for _, v := range b {
			ref = math.Max(ref, math.Abs(v))
		}
		out = append(out, TensorErr{Net: net.Label, Depth: depth, Seed: seed, Tensor: name, Numel: len(b), MaxRef: ref,
			Err: relMax(a, b, ref), ErrPerturbed: relMax(rp[keep[i]].d, b, ref)})
	}
	return out, math.Abs(l32-l64) / math.Abs(l64), nparams, nil
}

// relMax is max|a − b| / ref (NaN for ref 0).
func relMax(a, b []float64, ref float64) float64 {
	if ref == 0 {
		return math.NaN()
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(a[i]-b[i]))
	}
	return d / ref
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// median of sorted values (NaNs sort first with sort.Float64s and are
// skipped).
func median(sorted []float64) float64 {
	i := 0
	for i < len(sorted) && math.IsNaN(sorted[i]) {
		i++
	}
	v := sorted[i:]
	if len(v) == 0 {
		return math.NaN()
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func spread(vs []float64) [3]float64 {
	out := [3]float64{0, math.Inf(1), math.Inf(-1)}
	for _, v := range vs {
		out[0] += v / float64(len(vs))
		out[1], out[2] = math.Min(out[1], v), math.Max(out[2], v)
	}
	return out
}

// PrecisionTensorsHeader is precision_tensors.csv's first line.
const PrecisionTensorsHeader = "network,depth,seed,tensor,numel,max_abs_f64,rel_err,rel_err_perturbed_f64"

func writePrecision(opts PrecisionOptions, rows []PrecisionRow, all []TensorErr) error {
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return err
	}
	err := tensor.WriteFileAtomic(filepath.Join(opts.Out, "precision_tensors.csv"), func(w io.Writer) error {
		fmt.Fprintln(w, PrecisionTensorsHeader)
		for _, e := range all {
			fmt.Fprintf(w, "%s,%d,%d,%s,%d,%s,%s,%s\n", e.Net, e.Depth, e.Seed, e.Tensor, e.Numel, ff(e.MaxRef), ff(e.Err), ff(e.ErrPerturbed))
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tensor.WriteFileAtomic(filepath.Join(opts.Out, "precision.md"), func(w io.Writer) error {
		fmt.Fprintf(w, "Float32 vs float64 gradients, batch of %d Fashion-MNIST training images, seeds 1..%d (PyTorch-default init), label smoothing 0.1.\n", opts.Batch, opts.Seeds)
		fmt.Fprintln(w, "Error per gradient tensor: max|g32 − g64| / max|g64|. Median and max over the tensors of one seed; mean [min, max] over seeds.")
		fmt.Fprintln(w, "Control: the same measure between float64 gradients at the weights and at the weights times (1 + u·2^-24), u uniform in [-1, 1).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| network | depth | parameters | f32: median over tensors | f32: max over tensors | f32: tensors > 1e-3 | f32: worst tensor | f32: loss rel. err | control: median | control: max |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		for _, r := range rows {
			fmt.Fprintf(w, "| %s | %d× | %s | %.2g [%.2g, %.2g] | %.2g [%.2g, %.2g] | %.1f%% | %s | %.1g | %.2g [%.2g, %.2g] | %.2g [%.2g, %.2g] |\n", r.Net, r.Depth, commas(r.Params),
				r.Median[0], r.Median[1], r.Median[2], r.Max[0], r.Max[1], r.Max[2], 100*r.Over1e3, r.Worst, r.LossErr,
				r.PMedian[0], r.PMedian[1], r.PMedian[2], r.PMax[0], r.PMax[1], r.PMax[2])
		}
		return nil
	})
}

// commas formats n with thousands separators.
func commas(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// NetStats returns the learnable parameters and MACs per image of a
// network (as kiln stats counts them: params that are not buffers; conv
// and dense multiply-accumulates).
func NetStats(n Net) (params, macs int64, err error) {
	g, err := n.Load(1)
	if err != nil {
		return 0, 0, err
	}
	for i, nd := range g.Nodes {
		if nd.Op == ir.OpParam && !nd.Attrs.Bool("buffer") {
			params += int64(numel(nd.Type.Shape))
		}
		macs += g.MACs(i)
	}
	return params, macs, nil
}
