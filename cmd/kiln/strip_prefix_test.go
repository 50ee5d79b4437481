package main

import (
	"archive/zip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestWeightsHints covers the weight-file hints of issue 10: a PyTorch
// checkpoint given to --weights is recognised, a state dict whose names all
// carry a prefix gets a --strip-prefix suggestion, and --strip-prefix (on
// run, build, export and bench) makes it load.
func TestWeightsHints(t *testing.T) {
	dir := t.TempDir()
	const src = "network n(x: f32[N, 3, 8, 8]) {\n    c = conv2d(x, 4, 3)\n    b = batchnorm(c)\n    return relu(b)\n}\n"
	net := filepath.Join(dir, "n.kiln")
	if err := os.WriteFile(net, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := dsl.Load(net, []byte(src), dsl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	params, err := generateWeights(g.Params())
	if err != nil {
		t.Fatal(err)
	}
	prefixed := map[string]*tensor.Tensor{}
	for k, v := range params {
		prefixed["module."+k] = v
	}
	dp := filepath.Join(dir, "dp.safetensors")
	if err := tensor.WriteSafetensorsFile(dp, prefixed, nil); err != nil {
		t.Fatal(err)
	}
	pt := filepath.Join(dir, "model.pt")
	fh, err := os.Create(pt)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(fh)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "model/data.pkl", Method: zip.Store})
	w.Write([]byte("\x80\x02}q\x00."))
	zw.Close()
	fh.Close()
	in := filepath.Join(dir, "x.npy")
	if err := tensor.WriteNPYFile(in, tensor.New(1, 3, 8, 8)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "y.npy")
	tests := []struct {
		name string
		args []string
		want string // "" = succeeds
	}{
		{"pytorch checkpoint", []string{"run", "--input", in, "--output", out, "--weights", pt, net},
			"this is a PyTorch checkpoint (torch.save's zip format), not safetensors: save it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"},
		{"prefix hint", []string{"run", "--input", in, "--output", out, "--weights", dp, net},
			`hint: the checkpoint's names carry the prefix "module.": with --strip-prefix module., 6 of the network's 6 tensors match by name`},
		{"strip-prefix run", []string{"run", "--input", in, "--output", out, "--weights", dp, "--strip-prefix", "module.", net}, ""},
		{"strip-prefix export", []string{"export", "--onnx", "-o", filepath.Join(dir, "n.onnx"), "--weights", dp, "--strip-prefix", "module.", net}, ""},
		{"wrong prefix", []string{"run", "--input", in, "--output", out, "--weights", dp, "--strip-prefix", "model.", net},
			`with --strip-prefix model.module.`},
		{"strip-prefix without weights", []string{"run", "--input", in, "--output", out, "--strip-prefix", "module.", net}, "--strip-prefix needs --weights"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := kiln(t, tc.args...)
			if tc.want == "" {
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr)
				}
				return
			}
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant it to contain %q", code, stderr, tc.want)
			}
		})
	}
}
