package main

import (
	"strings"
	"testing"
)

// TestExperimentCommand checks kiln experiment's argument handling and
// its network table (the training runs themselves are tested in package
// experiment).
func TestExperimentCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"experiment", "--out", t.TempDir(), "nope"}, 2, `unknown experiment "nope"`},
		{[]string{"experiment", "rq1"}, 2, "--out DIR is required"},
		{[]string{"experiment", "--out", t.TempDir(), "--backend", "gpu", "rq1"}, 2, "--backend gpu: have compiled, interp"},
		{[]string{"experiment", "--out", t.TempDir(), "--depths", "1,x", "precision"}, 2, `--depths "1,x"`},
		{[]string{"experiment", "nets"}, 0, "resnet-w6-s0.1"},
		{[]string{"experiment", "--out", t.TempDir(), "--thresholds", "80,x", "rq1"}, 2, `--thresholds "80,x"`},
		{[]string{"experiment", "--out", t.TempDir(), "--lr", "-1", "rq1"}, 2, "must not be negative"},
		{[]string{"experiment", "--out", t.TempDir(), "--nets", "nope", "rq1"}, 1, "no network among"},
	} {
		var out, errb strings.Builder
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("kiln %s: exit %d, output %q %q; want exit %d and %q", strings.Join(tc.args, " "), code, out.String(), errb.String(), tc.code, tc.want)
		}
	}
}
