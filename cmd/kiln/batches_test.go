package main

import (
	"flag"
	"fmt"
	"strings"
	"testing"
)

// TestBatchFlag: --batch takes one size or, for commands that accept it
// (kiln build, kiln check), a list, sorted; bad lists are refused at parse
// time, lists elsewhere and sizes over --max-batch when options are built.
func TestBatchFlag(t *testing.T) {
	for _, c := range []struct {
		arg   string
		multi bool
		batch int
		list  []int
		want  string // error substring, "" for none
	}{
		{"8", false, 8, []int{8}, ""},
		{"32,1,8", true, 1, []int{1, 8, 32}, ""},
		{"1, 3", true, 1, []int{1, 3}, ""},
		{"1,8", false, 1, nil, "this command takes one batch size"},
		{"1,1", true, 0, nil, "batch size 1 given twice"},
		{"0", true, 0, nil, "--batch must be positive, got 0"},
		{"1,x", true, 0, nil, `"x" is not a batch size`},
		{"1,5000", true, 1, nil, "--batch 5000 exceeds the limit 4096"},
	} {
		var nf netFlags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(&strings.Builder{})
		nf.register(fs)
		nf.multiBatch = c.multi
		err := fs.Parse([]string{"--batch", c.arg})
		if err == nil {
			_, err = nf.options()
		}
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("--batch %s: %v, want %q", c.arg, err, c.want)
			}
			continue
		}
		if err != nil || nf.batch != c.batch || fmt.Sprint(nf.batchList()) != fmt.Sprint(c.list) {
			t.Errorf("--batch %s: %v, batch %d, list %v; want %d, %v", c.arg, err, nf.batch, nf.batchList(), c.batch, c.list)
		}
	}
}
