package experiment

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/trainer"
)

var nan = math.NaN()

// ReadMetrics reads a trainer metrics file (trainer.MetricsHeader).
func ReadMetrics(path string) ([]Epoch, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil // diverged in the first epoch: no row
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var out []Epoch
	line := 0
	for sc.Scan() {
		line++
		if line == 1 {
			if sc.Text() != trainer.MetricsHeader {
				return nil, fmt.Errorf("%s:1: header %q, want %q", path, sc.Text(), trainer.MetricsHeader)
			}
			continue
		}
		fs := strings.Split(sc.Text(), ",")
		if len(fs) != 7 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 7", path, line, len(fs))
		}
		num := func(s string) float64 {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nan
			}
			return v
		}
		ep, err := strconv.Atoi(fs[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: epoch %q: %v", path, line, fs[0], err)
		}
		out = append(out, Epoch{Epoch: ep, TrainLoss: num(fs[1]), Top1: num(fs[2]), Top5: num(fs[3]), LR: num(fs[4]), ImgPerSec: num(fs[5]), WallS: num(fs[6])})
	}
	return out, sc.Err()
}

// CurvesHeader is curves.csv's first line: one row per epoch of every run.
const CurvesHeader = "network,seed,epoch,train_loss,test_top1,test_top5,lr,img_per_s,wall_s,elapsed_s,dead_frac,status"

func ff(v float64) string {
	if math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'g', 7, 64)
}

// WriteCurves writes every epoch of every run to path (CurvesHeader).
func WriteCurves(path string, results []*Result) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return tensor.WriteFileAtomic(path, func(w io.Writer) error {
		fmt.Fprintln(w, CurvesHeader)
		for _, r := range results {
			for _, e := range r.Epochs {
				fmt.Fprintf(w, "%s,%d,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", r.Net, r.Seed, e.Epoch, ff(e.TrainLoss), ff(e.Top1), ff(e.Top5), ff(e.LR),
					ff(e.ImgPerSec), ff(e.WallS), ff(e.ElapsedS), ff(e.DeadFrac), r.Status)
			}
		}
		return nil
	})
}

// Stat is a mean and a sample standard deviation over n values (sd NaN
// for n < 2), and how many runs the values came from (Of).
type Stat struct {
	Mean, SD float64
	N, Of    int
}

func stat(vs []float64, of int) Stat {
	s := Stat{Mean: nan, SD: nan, N: len(vs), Of: of}
	if len(vs) == 0 {
		return s
	}
	sum := 0.0
	for _, v := range vs {
		sum += v
	}
	s.Mean = sum / float64(len(vs))
	if len(vs) > 1 {
		ss := 0.0
		for _, v := range vs {
			ss += (v - s.Mean) * (v - s.Mean)
		}
		s.SD = math.Sqrt(ss / float64(len(vs)-1))
	}
	return s
}

// String formats "mean ± sd", with "(k/n)" when only k of n runs have a
// value (a threshold not reached by every seed).
func (s Stat) String() string { return s.format(2) }

func (s Stat) format(prec int) string {
	if s.N == 0 {
		return "—"
	}
	out := strconv.FormatFloat(s.Mean, 'f', prec, 64)
	if !math.IsNaN(s.SD) {
		out += " ± " + strconv.FormatFloat(s.SD, 'f', prec, 64)
	}
	if s.N < s.Of {
		out += fmt.Sprintf(" (%d/%d)", s.N, s.Of)
	}
	return out
}

// Row is one line of the summary: a network (or an ensemble) over its
// seeds.
type Row struct {
	Net   string
	Runs  int
	Final Stat // final test top-1, percent
	// ToEpochs and ToSeconds hold, per threshold, the first epoch and the
	// elapsed seconds at which test top-1 reached it, over the runs that
	// reached it.
	ToEpochs, ToSeconds []Stat
	Dead                Stat // final dead-unit fraction
	Seconds             Stat // the run's wall seconds
	Status              string
}

// Summarize computes one Row per network.
func Summarize(ex *Experiment, results []*Result) []Row {
	var rows []Row
	for _, label := range labels(results) {
		var rs []*Result
		for _, r := range results {
			if r.Net == label {
				rs = append(rs, r)
			}
		}
		row := Row{Net: label, Runs: len(rs)}
		var final, dead, secs []float64
		var status []string
		for _, r := range rs {
			secs = append(secs, r.Seconds)
			if r.Status != "ok" {
				status = append(status, fmt.Sprintf("seed %d %s", r.Seed, r.Status))
			}
			if len(r.Epochs) == 0 {
				continue
			}
			last := r.Epochs[len(r.Epochs)-1]
			if !math.IsNaN(last.Top1) {
				final = append(final, 100*last.Top1)
			}
			if !math.IsNaN(last.DeadFrac) {
				dead = append(dead, last.DeadFrac)
			}
		}
		row.Final, row.Dead, row.Seconds = stat(final, len(rs)), stat(dead, len(rs)), stat(secs, len(rs))
		for _, t := range ex.Thresholds {
			var eps, ss []float64
			for _, r := range rs {
				for _, e := range r.Epochs {
					if e.Top1 >= t {
						eps = append(eps, float64(e.Epoch))
						ss = append(ss, e.ElapsedS)
						break
					}
				}
			}
			row.ToEpochs = append(row.ToEpochs, stat(eps, len(rs)))
			row.ToSeconds = append(row.ToSeconds, stat(ss, len(rs)))
		}
		row.Status = "ok"
		if len(status) > 0 {
			row.Status = strings.Join(status, "; ")
		}
		rows = append(rows, row)
	}
	return rows
}

// SummaryHeader returns summary.csv's first line for the thresholds.
func SummaryHeader(thr []float64) string {
	h := []string{"network", "runs", "final_top1_mean", "final_top1_sd"}
	for _, t := range thr {
		p := strconv.FormatFloat(100*t, 'g', -1, 64)
		h = append(h, "epochs_to_"+p+"_mean", "epochs_to_"+p+"_sd", "epochs_to_"+p+"_n", "seconds_to_"+p+"_mean", "seconds_to_"+p+"_sd")
	}
	return strings.Join(append(h, "dead_frac_mean", "seconds_mean", "status"), ",")
}

// WriteSummary writes OUT/summary.csv and OUT/summary.md.
func WriteSummary(out string, ex *Experiment, rows []Row) error {
	err := tensor.WriteFileAtomic(filepath.Join(out, "summary.csv"), func(w io.Writer) error {
		fmt.Fprintln(w, SummaryHeader(ex.Thresholds))
		for _, r := range rows {
			f := []string{r.Net, strconv.Itoa(r.Runs), ff(r.Final.Mean), ff(r.Final.SD)}
			for i := range ex.Thresholds {
				e, s := statAt(r.ToEpochs, i), statAt(r.ToSeconds, i)
				f = append(f, ff(e.Mean), ff(e.SD), strconv.Itoa(e.N), ff(s.Mean), ff(s.SD))
			}
			f = append(f, ff(r.Dead.Mean), ff(r.Seconds.Mean), strings.ReplaceAll(r.Status, ",", ";"))
			fmt.Fprintln(w, strings.Join(f, ","))
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tensor.WriteFileAtomic(filepath.Join(out, "summary.md"), func(w io.Writer) error {
		fmt.Fprintf(w, "Experiment %s: %s\n\n", ex.Name, ex.Question)
		h := "| network | runs | final top-1 % |"
		sep := "|---|---|---|"
		for _, t := range ex.Thresholds {
			h += fmt.Sprintf(" epochs to %g%% | s to %g%% |", 100*t, 100*t)
			sep += "---|---|"
		}
		fmt.Fprintln(w, h+" dead units | status |")
		fmt.Fprintln(w, sep+"---|---|")
		for _, r := range rows {
			line := fmt.Sprintf("| %s | %d | %s |", r.Net, r.Runs, r.Final)
			for i := range ex.Thresholds {
				line += fmt.Sprintf(" %s | %s |", statAt(r.ToEpochs, i).format(1), statAt(r.ToSeconds, i).format(0))
			}
			fmt.Fprintln(w, line+fmt.Sprintf(" %s | %s |", r.Dead.format(3), r.Status))
		}
		return nil
	})
}

func statAt(s []Stat, i int) Stat {
	if i < len(s) {
		return s[i]
	}
	return Stat{Mean: nan, SD: nan}
}
