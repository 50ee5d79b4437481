package experiment

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/trainer"
)

// Files an experiment adds to each run directory, next to the trainer's,
// so that a later `kiln experiment NAME --summarize` can rebuild the
// curves and the summary from the runs on disk (for example after the
// experiment was split over processes with --nets, or interrupted).
const (
	// DeadFile holds the dead-unit fraction after every epoch:
	// "epoch,dead_frac" (empty when not measured).
	DeadFile = "dead.csv"
	// StatusFile holds one line: the run's status, a tab, its wall
	// seconds.
	StatusFile = "status.txt"
)

// setEpochs sets r.Epochs from the trainer's metrics and the dead-unit
// fraction of each epoch's evaluation: the elapsed seconds, and the status
// "died at epoch E" at the first epoch whose fraction is 1.
func (r *Result) setEpochs(eps []Epoch, fracs []float64) {
	elapsed := 0.0
	for i := range eps {
		elapsed += eps[i].WallS
		eps[i].ElapsedS = elapsed
		eps[i].DeadFrac = nan
		if i < len(fracs) {
			eps[i].DeadFrac = fracs[i]
			if fracs[i] == 1 && r.Status == "ok" {
				r.Status = fmt.Sprintf("died at epoch %d", eps[i].Epoch)
			}
		}
	}
	r.Epochs = eps
}

// writeRunFiles writes DeadFile and StatusFile into the run directory.
func writeRunFiles(dir string, r *Result, fracs []float64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := tensor.WriteFileAtomic(filepath.Join(dir, DeadFile), func(w io.Writer) error {
		fmt.Fprintln(w, "epoch,dead_frac")
		for i, f := range fracs {
			fmt.Fprintf(w, "%d,%s\n", i+1, exact(f))
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tensor.WriteFileAtomic(filepath.Join(dir, StatusFile), func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "%s\t%s\n", r.Status, exact(r.Seconds))
		return err
	})
}

// exact formats v so that it parses back to the same float64 ("" for NaN).
func exact(v float64) string {
	if math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// readResult reads the run OUT/<label>/seed<k> from its files: nil when
// it has no metrics (never started, or no epoch finished). A run without
// StatusFile was stopped before it ended and is reported as partial.
func readResult(out, label string, seed uint64) (*Result, error) {
	dir := filepath.Join(out, label, fmt.Sprintf("seed%d", seed))
	eps, err := ReadMetrics(filepath.Join(dir, trainer.MetricsFile))
	if err != nil || len(eps) == 0 {
		return nil, err
	}
	r := &Result{Net: label, Seed: seed, Dir: dir, Status: "partial (stopped)"}
	for _, e := range eps {
		r.Seconds += e.WallS
	}
	if b, err := os.ReadFile(filepath.Join(dir, StatusFile)); err == nil {
		st, secs, _ := strings.Cut(strings.TrimSpace(string(b)), "\t")
		r.Status = st
		if v, err := strconv.ParseFloat(secs, 64); err == nil {
			r.Seconds = v
		}
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	var fracs []float64
	if f, err := os.Open(filepath.Join(dir, DeadFile)); err == nil {
		sc := bufio.NewScanner(f)
		for line := 1; sc.Scan(); line++ {
			if line == 1 {
				continue
			}
			_, v, ok := strings.Cut(sc.Text(), ",")
			if !ok {
				f.Close()
				return nil, fmt.Errorf("%s:%d: want epoch,dead_frac", filepath.Join(dir, DeadFile), line)
			}
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				x = nan
			}
			fracs = append(fracs, x)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	r.setEpochs(eps, fracs)
	return r, nil
}

// selectNets applies Options.Nets and Options.Width to a copy of ex.
func selectNets(ex *Experiment, opts Options) (*Experiment, error) {
	cp := *ex
	cp.Nets = nil
	for _, n := range ex.Nets {
		if opts.Width > 0 {
			if w, ok := n.Params["w"]; ok {
				p := map[string]float64{}
				for k, v := range n.Params {
					p[k] = v
				}
				p["w"] = opts.Width
				n.Params = p
				n.Label = strings.Replace(n.Label, fmt.Sprintf("-w%g", w), fmt.Sprintf("-w%g", opts.Width), 1)
			}
		}
		if len(opts.Nets) == 0 || slices.Contains(opts.Nets, n.Label) {
			cp.Nets = append(cp.Nets, n)
		}
	}
	if len(cp.Nets) == 0 {
		var have []string
		for _, n := range ex.Nets {
			have = append(have, n.Label)
		}
		return nil, fmt.Errorf("experiment %s: no network among %q (have %s)", ex.Name, opts.Nets, strings.Join(have, ", "))
	}
	return &cp, nil
}

// SignificanceHeader is significance.csv's first line.
const SignificanceHeader = "a,b,n_a,n_b,mean_a,mean_b,diff,t,df,p_two_sided"

// WriteSignificance compares, for every pair of ex.Compare whose networks
// both have at least two finished runs, the final test top-1 (percent)
// over seeds with Welch's t-test (WelchTTest), and writes
// OUT/significance.csv and a section appended to OUT/summary.md. Runs
// that diverged or stopped early count with their last accuracy.
func WriteSignificance(out string, ex *Experiment, results []*Result) error {
	final := func(label string) []float64 {
		var v []float64
		for _, r := range results {
			if r.Net == label && len(r.Epochs) > 0 {
				if a := r.Epochs[len(r.Epochs)-1].Top1; !math.IsNaN(a) {
					v = append(v, 100*a)
				}
			}
		}
		return v
	}
	var csv, md strings.Builder
	fmt.Fprintln(&csv, SignificanceHeader)
	for _, pair := range ex.Compare {
		a, b := final(pair[0]), final(pair[1])
		w, err := WelchTTest(a, b)
		if err != nil {
			if len(a) > 0 && len(b) > 0 {
				fmt.Fprintf(&md, "- %s vs %s: no test (%v)\n", pair[0], pair[1], err)
			}
			continue
		}
		sa, sb := stat(a, len(a)), stat(b, len(b))
		fmt.Fprintf(&csv, "%s,%s,%d,%d,%s,%s,%s,%s,%s,%s\n", pair[0], pair[1], len(a), len(b), ff(sa.Mean), ff(sb.Mean), ff(w.MeanDiff), ff(w.T), ff(w.DF), ff(w.P))
		verdict := "not significant at the 5 % level"
		if w.P < 0.05 {
			verdict = "significant at the 5 % level"
		}
		fmt.Fprintf(&md, "- %s (%s %%, n = %d) vs %s (%s %%, n = %d): difference %+.2f points, Welch t = %.2f, ν = %.1f, two-sided p = %.3g: %s.\n",
			pair[0], sa, len(a), pair[1], sb, len(b), w.MeanDiff, w.T, w.DF, w.P, verdict)
	}
	if len(ex.Compare) == 0 {
		return nil
	}
	if err := tensor.WriteFileAtomic(filepath.Join(out, "significance.csv"), func(w io.Writer) error {
		_, err := io.WriteString(w, csv.String())
		return err
	}); err != nil {
		return err
	}
	if md.Len() == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(out, "summary.md"), os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\nFinal test top-1 compared over seeds (Welch's t-test, two-sided):\n\n%s", md.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
