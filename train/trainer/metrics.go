package trainer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// MetricsFile is the per-epoch metrics table in a run directory, CSV with
// the header MetricsHeader: epoch (from 1), mean training loss over the
// epoch's steps, test top-1 and top-5 accuracy (fractions; empty without a
// test set), learning rate, training images per second (steps only, not
// evaluation) and the epoch's wall seconds (training and evaluation).
const MetricsFile = "metrics.csv"

// MetricsHeader is MetricsFile's first line.
const MetricsHeader = "epoch,train_loss,test_top1,test_top5,lr,img_per_s,wall_s"

type metricsRow struct {
	Epoch                 int
	Test                  bool // Top1 and Top5 are measured
	TrainLoss, Top1, Top5 float64
	LR, ImgPerSec         float64
	WallSeconds           float64
}

func (m metricsRow) csv() string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 7, 64) }
	t1, t5 := "", ""
	if m.Test {
		t1, t5 = f(m.Top1), f(m.Top5)
	}
	return strings.Join([]string{strconv.Itoa(m.Epoch), f(m.TrainLoss), t1, t5, f(m.LR), strconv.FormatFloat(m.ImgPerSec, 'f', 2, 64), strconv.FormatFloat(m.WallSeconds, 'f', 3, 64)}, ",")
}

func (m metricsRow) summary() string {
	s := fmt.Sprintf("train loss %.4f", m.TrainLoss)
	if m.Test {
		s += fmt.Sprintf(", test top-1 %.2f%%, top-5 %.2f%%", 100*m.Top1, 100*m.Top5)
	}
	return s + fmt.Sprintf(", lr %.4g, %.1f img/s, %.1f s", m.LR, m.ImgPerSec, m.WallSeconds)
}

// appendMetrics appends one row to dir/MetricsFile, writing the header
// first into a new file.
func appendMetrics(dir string, m metricsRow) error {
	path := filepath.Join(dir, MetricsFile)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err == nil && st.Size() == 0 {
		_, err = fmt.Fprintln(f, MetricsHeader)
	}
	if err == nil {
		_, err = fmt.Fprintln(f, m.csv())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// trimMetrics drops the rows of epochs after epoch from dir/MetricsFile
// (a run stopped after writing an epoch's row but before its checkpoint
// repeats that epoch when resumed).
func trimMetrics(dir string, epoch int) error {
	path := filepath.Join(dir, MetricsFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var keep bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f, _, _ := strings.Cut(line, ",")
		if e, err := strconv.Atoi(f); err == nil && e > epoch {
			continue
		}
		keep.WriteString(line + "\n")
	}
	if bytes.Equal(keep.Bytes(), b) {
		return nil
	}
	return tensor.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(keep.Bytes()); return err })
}

// progress prints the training progress: on a terminal one line redrawn
// with a carriage return, otherwise a plain line about every tenth of an
// epoch.
type progress struct {
	w            io.Writer
	tty          bool
	epochs       int
	steps, batch int
	start        time.Time
	done0, done  int // global steps before this session, steps done in it
	open         bool
}

func (p *progress) step(epoch, k int, loss float64) {
	p.done++
	el := time.Since(p.start).Seconds()
	rate := float64(p.done*p.batch) / el
	left := p.epochs*p.steps - p.done0 - p.done
	eta := time.Duration(float64(left) * el / float64(p.done) * float64(time.Second)).Round(time.Second)
	line := fmt.Sprintf("epoch %d/%d step %d/%d: loss %.4f, %.1f img/s, ETA %s", epoch+1, p.epochs, k+1, p.steps, loss, rate, eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r\x1b[K%s", line)
		p.open = true
		return
	}
	if every := max(1, p.steps/10); (k+1)%every == 0 || k+1 == p.steps {
		fmt.Fprintln(p.w, line)
	}
}

// end finishes a redrawn line.
func (p *progress) end() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
}
