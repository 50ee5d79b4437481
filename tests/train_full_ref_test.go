package tests

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// torchPython is Debian's Python with python3-torch (the python3 on PATH
// may be another one without torch).
const torchPython = "/usr/bin/python3"

// refStep runs tests/train_full_ref.py twice, one step of net in PyTorch
// float32 and then in float64, from params (every param and BatchNorm
// buffer; optimizer state is zero) on images x and the labels of the
// one-hot target, in a temporary directory. It returns, per updated tensor
// under Kiln's names, the change the float64 step made, ref − init,
// computed in float64 and rounded once to float32 (the rounding is
// relative to the change itself, far below every error the check
// measures), PyTorch float32's distance to float64 (computed by the
// float64 run, so that this process holds one reference, not two), and
// both losses.
func refStep(t *testing.T, net string, params map[string]*tensor.Tensor, x, target *tensor.Tensor) *refResult {
	t.Helper()
	if err := exec.Command(torchPython, "-c", "import torch").Run(); err != nil {
		testenv.Missing(t, "PyTorch for the float64 reference (%s -c 'import torch': %v; apt-get install python3-torch)", torchPython, err)
	}
	dir := t.TempDir()
	init := map[string]*tensor.Tensor{}
	for k, v := range params {
		if !strings.HasPrefix(k, "optim.") {
			init[k] = v
		}
	}
	if err := tensor.WriteSafetensorsFile(filepath.Join(dir, "init.safetensors"), init, nil); err != nil {
		t.Fatal(err)
	}
	if err := tensor.WriteNPYFile(filepath.Join(dir, "x.npy"), x); err != nil {
		t.Fatal(err)
	}
	n, k := target.Shape[0], target.Shape[1]
	labels := make([]int64, n)
	for b := range n {
		for c := range k {
			if target.Data[b*k+c] == 1 {
				labels[b] = int64(c)
			}
		}
	}
	if err := writeNPYInt64(filepath.Join(dir, "y.npy"), labels); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("train_full_ref.py")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--dtype", "float32"},
		{"--dtype", "float64", "--compare", filepath.Join(dir, "ref_float32.safetensors")},
	} {
		t0 := time.Now()
		cmd := exec.Command(torchPython, append([]string{script, "--net", net, "--dir", dir}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", script, strings.Join(args, " "), err, out.String())
		}
		t.Logf("PyTorch step: %s (%.1f s)", strings.TrimSpace(out.String()), time.Since(t0).Seconds())
	}
	f, err := readSafetensorsF64(filepath.Join(dir, "ref_float64.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	delta := map[string][]float32{}
	for name, v := range f {
		d := make([]float32, len(v))
		if p, ok := params[name]; ok {
			if len(p.Data) != len(v) {
				t.Fatalf("ref_float64.safetensors: %s has %d values, the param %d", name, len(v), len(p.Data))
			}
			for i := range v {
				d[i] = float32(v[i] - float64(p.Data[i]))
			}
		} else {
			for i := range v {
				d[i] = float32(v[i])
			}
		}
		delta[name] = d
	}
	r := &refResult{delta: delta}
	for _, j := range []struct {
		file string
		loss *float64
	}{{"ref_float32.json", &r.loss32}, {"ref_float64.json", &r.loss}} {
		var v struct {
			Loss   float64
			Errors map[string]float64
		}
		b, err := os.ReadFile(filepath.Join(dir, j.file))
		if err == nil {
			err = json.Unmarshal(b, &v)
		}
		if err != nil {
			t.Fatalf("%s: %v", j.file, err)
		}
		*j.loss = v.Loss
		if v.Errors != nil {
			r.torch = v.Errors
		}
	}
	return r
}

// refResult is the PyTorch reference step.
type refResult struct {
	// delta is each updated tensor's change in float64, ref − init,
	// rounded once to float32.
	delta map[string][]float32
	// torch is PyTorch float32's distance to float64 per updated tensor,
	// ‖a32 − a64‖₂.
	torch map[string]float64
	// loss and loss32 are the float64 and float32 losses.
	loss, loss32 float64
}

// writeNPYInt64 writes a 1-D int64 .npy file (NumPy format 1.0).
func writeNPYInt64(path string, v []int64) error {
	h := fmt.Sprintf("{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }", len(v))
	h += strings.Repeat(" ", (64-(10+len(h)+1)%64)%64) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(h)))
	b.WriteString(h)
	binary.Write(&b, binary.LittleEndian, v)
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// readSafetensorsF64 reads a safetensors file of F64 tensors (the
// reference script's output; ir/tensor reads only 32- and 16-bit floats).
func readSafetensorsF64(path string) (map[string][]float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 8 {
		return nil, fmt.Errorf("%s: too short for a safetensors header", path)
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%s: header length %d beyond the file's %d bytes", path, n, len(b))
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		return nil, fmt.Errorf("%s: header: %v", path, err)
	}
	data := b[8+n:]
	out := map[string][]float64{}
	for k, raw := range hdr {
		if k == "__metadata__" {
			continue
		}
		var e struct {
			DType   string `json:"dtype"`
			Offsets [2]int `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %v", path, k, err)
		}
		if e.DType != "F64" {
			return nil, fmt.Errorf("%s: tensor %s is %s, want F64", path, k, e.DType)
		}
		s, end := e.Offsets[0], e.Offsets[1]
		if s < 0 || end < s || end > len(data) || (end-s)%8 != 0 {
			return nil, fmt.Errorf("%s: tensor %s: bad data_offsets %v", path, k, e.Offsets)
		}
		v := make([]float64, (end-s)/8)
		for i := range v {
			v[i] = math.Float64frombits(binary.LittleEndian.Uint64(data[s+8*i:]))
		}
		out[k] = v
	}
	return out, nil
}

// refErr is one updated tensor's distances to the float64 reference.
type refErr struct {
	name string
	n    int
	// scale is ‖Δref‖₂, the reference change; c, i and t are the
	// distances ‖Δ − Δref‖₂ of the compiled step's, the float32
	// interpreter's and PyTorch float32's change.
	scale, c, i, t float64
	// floor is the absolute floor refFloorRel·√n·rms of the tensor's kind.
	floor float64
}

// rel returns e's distances relative to ‖Δref‖ (for logs).
func (e refErr) rel() (c, i, t float64) {
	s := max(e.scale, 1e-300)
	return e.c / s, e.i / s, e.t / s
}

// refErrors measures, per updated tensor, the change the compiled (got)
// and the interpreter's (want) step made against the float64 reference's.
func refErrors(t *testing.T, params, want, got map[string]*tensor.Tensor, ref *refResult) []refErr {
	t.Helper()
	var errs []refErr
	for name, w := range want {
		r, ok := ref.delta[name]
		te, ok2 := ref.torch[name]
		if !ok || !ok2 {
			t.Errorf("the PyTorch reference has no %s", name)
			continue
		}
		g := got[name]
		if g == nil || len(g.Data) != len(r) || len(w.Data) != len(r) {
			t.Errorf("%s: sizes differ (reference %d)", name, len(r))
			continue
		}
		var p []float32
		if v, ok := params[name]; ok {
			p = v.Data
		}
		var ss, sc, si float64
		for k := range r {
			base := 0.0
			if p != nil {
				base = float64(p[k])
			}
			rk := float64(r[k])
			dc := float64(g.Data[k]) - base - rk
			di := float64(w.Data[k]) - base - rk
			ss += rk * rk
			sc += dc * dc
			si += di * di
		}
		errs = append(errs, refErr{name: name, n: len(r), scale: math.Sqrt(ss), c: math.Sqrt(sc), i: math.Sqrt(si), t: te})
	}
	// The floor: refFloorRel of the tensor kind's typical element size.
	rms := map[string][]float64{}
	for _, e := range errs {
		rms[refKind(e.name)] = append(rms[refKind(e.name)], e.scale/math.Sqrt(float64(e.n)))
	}
	for k := range errs {
		errs[k].floor = refFloorRel * math.Sqrt(float64(errs[k].n)) * median(rms[refKind(errs[k].name)])
	}
	sort.Slice(errs, func(a, b int) bool { return errs[a].name < errs[b].name })
	return errs
}

// refKind is the kind of an updated tensor for the floor: the last
// component of its name (weight, bias, running_mean, running_var,
// square_avg, momentum_buffer).
func refKind(name string) string {
	return name[strings.LastIndexByte(name, '.')+1:]
}

// The float64-reference rule (checkRef).
const (
	// refFactor bounds the compiled step's distance to float64 by a
	// multiple of the float32 error bar, as the training fixtures'
	// README §4 rule (err_kiln ≤ 4 × err_torch) does.
	refFactor = 4
	// refMedianFactor bounds the compiled step's median relative error
	// by a multiple of the float32 implementations' median.
	refMedianFactor = 2
	// refFloorRel is the absolute floor, relative to the typical element
	// of the tensor's kind across the network: about 10 float32 ulps.
	refFloorRel = 1e-6
	// refLossTol bounds |loss − loss64|/|loss64|.
	refLossTol = 1e-3
)

// checkRef applies the float64-reference rule to every updated tensor and
// logs the distribution of the errors. See TestFullNetworkTrainStepCompiled
// for the rule and the measured figures.
func checkRef(t *testing.T, params, want, got map[string]*tensor.Tensor, ref *refResult, loss, wantLoss float64) {
	t.Helper()
	errs := refErrors(t, params, want, got, ref)
	var rc, ri, rt []float64
	for _, e := range errs {
		c, i, tt := e.rel()
		rc, ri, rt = append(rc, c), append(ri, i), append(rt, tt)
	}
	m := max(median(ri), median(rt))
	bound := func(e refErr) float64 { return refFactor*max(e.i, e.t, m*e.scale) + e.floor }
	for _, e := range errs {
		if e.c > bound(e) {
			t.Errorf("%s: compiled ‖Δ−Δref‖ %.3g > %d × max(interpreter %.3g, PyTorch f32 %.3g, median rel %.3g × ‖Δref‖ %.3g) + floor %.3g",
				e.name, e.c, refFactor, e.i, e.t, m, e.scale, e.floor)
		}
	}
	if mc := median(rc); mc > refMedianFactor*m {
		t.Errorf("median compiled ‖Δ−Δref‖/‖Δref‖ %.3g > %d × the float32 median %.3g", mc, refMedianFactor, m)
	}
	for _, l := range []struct {
		what string
		v    float64
	}{{"compiled", loss}, {"interpreter", wantLoss}} {
		if d := math.Abs(l.v-ref.loss) / math.Abs(ref.loss); d > refLossTol {
			t.Errorf("%s loss %.9g, float64 %.12g (rel %.2g)", l.what, l.v, ref.loss, d)
		}
	}
	sort.Slice(errs, func(a, b int) bool { return errs[a].c/bound(errs[a]) > errs[b].c/bound(errs[b]) })
	for _, e := range errs[:min(10, len(errs))] {
		c, i, tt := e.rel()
		t.Logf("  %s: ‖Δref‖ %.3g; rel compiled %.3g, interpreter %.3g, PyTorch f32 %.3g; compiled/bound %.3g", e.name, e.scale, c, i, tt, e.c/bound(e))
	}
	t.Logf("float64 reference: loss compiled %.9g, interpreter %.9g, PyTorch f32 %.9g, f64 %.12g; over %d tensors ‖Δ−Δref‖/‖Δref‖ median/max: compiled %.3g/%.3g, interpreter %.3g/%.3g, PyTorch f32 %.3g/%.3g",
		loss, wantLoss, ref.loss32, ref.loss, len(errs), median(rc), maxOf(rc), median(ri), maxOf(ri), median(rt), maxOf(rt))
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
