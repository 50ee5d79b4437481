package main

import (
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestLoadWeightsRejectsBadValues writes a checkpoint for a conv+BatchNorm
// network with one bad value and requires loadWeights to refuse it, naming
// the tensor, the index and the value. Issue 11: a negative running_var
// passed the check and gave all-NaN logits with exit 0.
func TestLoadWeightsRejectsBadValues(t *testing.T) {
	const src = "block cb(x) {\n c = conv2d(x, 4, 3)\n return batchnorm(c)\n}\n" +
		"network n(x: f32[N, 3, 5, 5]) { return relu(cb(x)) }\n"
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	tests := []struct {
		name   string
		rename string // new name of the running_var param ("": keep)
		tensor string // tensor to edit ("" or the renamed name)
		index  int
		value  float32
		want   string // "" = loads
	}{
		{"good", "", "", 0, 0, ""},
		{"zero variance", "", "running_var", 1, 0, ""},
		{"negative variance", "", "running_var", 2, -0.25, `tensor "running_var" (a BatchNorm running variance) has negative value -0.25 at index 2 [2]`},
		{"NaN variance", "", "running_var", 3, nan, `tensor "running_var" has non-finite value NaN at index 3 [3]`},
		{"Inf conv weight", "", "c.weight", 7, inf, `tensor "c.weight" has non-finite value +Inf at index 7 [0,0,2,1]`},
		{"NaN mean", "", "running_mean", 0, nan, `tensor "running_mean" has non-finite value NaN at index 0 [0]`},
		// Found by its place in the graph (batchnorm's 5th operand), not by
		// the key's suffix.
		{"renamed negative variance", "bn_var", "bn_var", 0, -1, `tensor "bn_var" (a BatchNorm running variance) has negative value -1 at index 0 [0]`},
		{"negative mean is fine", "", "running_mean", 0, -1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := dsl.Load("n.kiln", []byte(src), dsl.Options{Batch: 1})
			if err != nil {
				t.Fatal(err)
			}
			if tc.rename != "" {
				for _, p := range g.Params() {
					if p.Name == "running_var" {
						p.Name = tc.rename
					}
				}
			}
			ws := map[string]*tensor.Tensor{}
			for _, p := range g.Params() {
				x := tensor.New(p.Type.Shape...)
				for i := range x.Data {
					x.Data[i] = 0.5
				}
				ws[p.Name] = x
			}
			if tc.tensor != "" {
				x, ok := ws[tc.tensor]
				if !ok {
					t.Fatalf("no tensor %q in %v", tc.tensor, paramNames(g))
				}
				x.Data[tc.index] = tc.value
			}
			path := filepath.Join(t.TempDir(), "w.safetensors")
			if err := tensor.WriteSafetensorsFile(path, ws, nil); err != nil {
				t.Fatal(err)
			}
			_, err = loadWeights(g, path)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("loadWeights: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("loadWeights accepted the weights; want %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func paramNames(g *ir.Graph) []string {
	var out []string
	for _, p := range g.Params() {
		out = append(out, p.Name)
	}
	return out
}

// TestImportPathFlag checks that --import-path (repeatable) lets a network
// import from a sibling directory, and that without it the import is
// refused at its position.
func TestImportPathFlag(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"lib/shared.kiln": "block twice(x) {\n return relu(x)\n}\n",
		"net/main.kiln":   "import \"shared.kiln\"\nnetwork n(x: f32[N, 3, 4, 4]) { return twice(x) }\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	main := filepath.Join(dir, "net", "main.kiln")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, main + ":1:1: cannot import \"shared.kiln\": file not found"},
		{[]string{"--import-path", filepath.Join(dir, "other"), "--import-path", filepath.Join(dir, "lib")}, ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var nf netFlags
		nf.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		_, err := nf.load(main)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}
