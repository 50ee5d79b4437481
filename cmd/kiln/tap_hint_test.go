package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestUnknownTapListsModules: an unknown --tap name is an error that
// suggests the closest module and lists the valid ones; past 40 marks the
// list starts with the modules of the name's own first segment, so the
// network's many features.N all show for a features.* typo.
func TestUnknownTapListsModules(t *testing.T) {
	v2, err := dsl.LoadFile("inception_resnet_v2.kiln", dsl.Options{FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	tiny, err := dsl.LoadFile("tiny.kiln", dsl.Options{FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, tap string
		tiny      bool
		want      []string
	}{
		{"typo", "repeat_1.25", false, []string{`--tap: inception_resnet_v2 has no module "repeat_1.25" (modules: repeat_1, repeat_1.0, repeat_1.1,`,
			"repeat_1.19", "more (kiln dump lists every mark)); did you mean repeat_1.2?"}},
		{"other module", "conv2d_7", false, []string{"; did you mean conv2d_7b?"}},
		{"short list", "stm", true, []string{`has no module "stm" (modules: blocks, blocks.0, blocks.1, fc, mixed, probs, reduce, stem, stem.0, stem.1, stem.2); did you mean stem?`}},
		{"nothing close", "zzzzzzzzzz", true, []string{`has no module "zzzzzzzzzz" (modules: blocks,`, "stem.2)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := v2
			if tc.tiny {
				g = tiny
			}
			_, err := withTaps(g, []string{tc.tap})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// kiln run says the same before running anything.
	in := filepath.Join(t.TempDir(), "x.npy")
	if err := tensor.WriteNPYFile(in, tensor.New(1, 3, 32, 32)); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := kiln(t, "run", "tiny", "--input", in, "--output", in+".out", "--tap", "stm")
	if code != 1 || !strings.Contains(stderr, `no module "stm" (modules: blocks,`) || !strings.Contains(stderr, "did you mean stem?") {
		t.Errorf("kiln run: exit %d\n%s", code, stderr)
	}
}
