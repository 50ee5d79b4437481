package main

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
)

func TestParseShape(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		err  string
	}{
		{"", nil, ""},
		{"3x299x299", []int{3, 299, 299}, ""},
		{"1x28x28", []int{1, 28, 28}, ""},
		{"3x299", nil, "want CxHxW"},
		{"3x0x5", nil, `"0" is not a positive integer`},
		{"3xax5", nil, `"a" is not a positive integer`},
	} {
		got, err := parseShape(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseShape(%q): error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("parseShape(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("parseShape(%q) = %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}

// TestRunTiny runs the harness end to end on the tiny network (batch 2,
// two steps, profiled): the figures it reports must be there and sane.
func TestRunTiny(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	res, err := run("tiny", 2, "", 2, 1, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"img_per_s", "run_img_per_s", "peak_rss_mib", "rss_mib"} {
		if v, ok := res[k].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v, want > 0", k, res[k])
		}
	}
	if a, ok := res["arena_bytes"].(int64); !ok || a <= 0 {
		t.Errorf("arena_bytes = %v, want > 0", res["arena_bytes"])
	}
	if l, ok := res["last_loss"].(float64); !ok || !(l > 0 && l < 100) {
		t.Errorf("last_loss = %v, want a finite positive loss", res["last_loss"])
	}
	if _, err := run("tiny", 2, "3x32", 1, 1, 1, false); err == nil || !strings.Contains(err.Error(), "want CxHxW") {
		t.Errorf("bad -input: error %v", err)
	}
}
