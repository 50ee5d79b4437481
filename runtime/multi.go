package rt

import (
	"fmt"
	"slices"
)

// MultiModel runs a network compiled for several batch sizes (a Bundle) on
// any number of samples. Each compiled program has its own kernels and
// arena; they share one copy of the weights. Its methods are safe for
// concurrent use.
//
// Run picks the smallest compiled batch B >= n for n samples, copies them
// into a zeroed batch of B and returns only their n result rows (padding
// rows are computed and dropped: every op of an inference network is
// independent across the batch, so they cannot change the real rows). More
// samples than the largest batch are split into chunks of the largest
// batch, and the remainder is run as above. This is the policy of TensorRT
// optimization profiles and Triton's padded batching, minus the
// multi-program scheduling.
type MultiModel struct {
	models  []*Model // ascending batch
	batches []int
	inRow   int // floats per sample of the input
	outRow  int
	tapRows []int
}

// OpenMulti opens every program of b (with opts, as Open does): the first
// copies and checks the weights as Open does, the others use that copy,
// whose SHA-256 was just verified. Any error names the program (number and
// batch size), so a damaged second program is refused at start, not at its
// first use.
func OpenMulti(b *Bundle, opts ...Options) (*MultiModel, error) {
	if len(opts) > 1 {
		return nil, fmt.Errorf("open artifact: at most one Options")
	}
	var o Options
	if len(opts) == 1 {
		o = opts[0]
	}
	progs := make([]Program, len(b.Artifacts))
	for i, a := range b.Artifacts {
		progs[i] = Program{Manifest: a.Manifest}
	}
	if len(progs) > 1 {
		if err := checkPrograms(progs); err != nil {
			return nil, fmt.Errorf("open artifact: %w", err)
		}
	} else if len(progs) == 0 {
		return nil, fmt.Errorf("open artifact: the bundle has no programs")
	}
	mm := &MultiModel{}
	ok := false
	defer func() {
		if !ok {
			mm.Close()
		}
	}()
	for i, a := range b.Artifacts {
		oi := o
		if i == 0 {
			a.mapping = b.mapping // the weights may be dropped from the mapping as they are copied
		} else {
			// The first program's verified copy of the same bytes.
			first := mm.models[0]
			a.Weights, a.mapping = first.weights, nil
			oi.CopyWeights, oi.SkipWeightsCheck = false, true
		}
		if len(b.Artifacts) > 1 && len(a.Manifest.State) > 0 {
			return nil, fmt.Errorf("open artifact %q: program %d (batch %d) has run-time state; a multi-batch artifact cannot share it between programs", a.Manifest.Network, i+1, a.Manifest.Batch)
		}
		m, err := Open(a, oi)
		if err != nil {
			if len(b.Artifacts) > 1 {
				return nil, fmt.Errorf("program %d of %d (batch %d): %w", i+1, len(b.Artifacts), a.Manifest.Batch, err)
			}
			return nil, err
		}
		mm.models = append(mm.models, m)
		mm.batches = append(mm.batches, a.Manifest.Batch)
	}
	// Manifest.Validate checked that every tensor leads with the batch.
	man := &mm.models[0].man
	mm.inRow = mustNumel(man.Input.Shape) / man.Batch
	mm.outRow = mustNumel(man.Output.Shape) / man.Batch
	for _, t := range man.Taps {
		mm.tapRows = append(mm.tapRows, mustNumel(t.Shape)/man.Batch)
	}
	ok = true
	return mm, nil
}

// Batches lists the compiled batch sizes, ascending.
func (mm *MultiModel) Batches() []int { return slices.Clone(mm.batches) }

// MaxBatch is the largest compiled batch size.
func (mm *MultiModel) MaxBatch() int { return mm.batches[len(mm.batches)-1] }

// Model returns the program compiled for exactly batch, or nil.
func (mm *MultiModel) Model(batch int) *Model {
	if i := slices.Index(mm.batches, batch); i >= 0 {
		return mm.models[i]
	}
	return nil
}

// Largest is the program of the largest batch (its Manifest describes the
// artifact).
func (mm *MultiModel) Largest() *Model { return mm.models[len(mm.models)-1] }

// Pick returns the batch size Run uses for n remaining samples: the
// smallest compiled batch >= n, or the largest if none is.
func (mm *MultiModel) Pick(n int) int {
	for _, b := range mm.batches {
		if b >= n {
			return b
		}
	}
	return mm.MaxBatch()
}

// InRow and OutRow are the floats per sample of the input and the output
// (every tensor of a manifest leads with the batch: Manifest.Validate).
func (mm *MultiModel) InRow() int  { return mm.inRow }
func (mm *MultiModel) OutRow() int { return mm.outRow }

// Run runs n = len(in)/InRow() samples; out must hold n*OutRow() floats.
func (mm *MultiModel) Run(in, out []float32) error {
	return mm.RunTaps(in, out, nil)
}

// RunTaps is Run that also fills each taps[i] (n rows of Manifest.Taps[i];
// nil taps, or a nil entry, skips them).
func (mm *MultiModel) RunTaps(in, out []float32, taps [][]float32) error {
	if len(in) == 0 || len(in)%mm.inRow != 0 {
		return fmt.Errorf("run: input has %d floats, want a positive multiple of %d (one sample)", len(in), mm.inRow)
	}
	n := len(in) / mm.inRow
	if len(out) != n*mm.outRow {
		return fmt.Errorf("run: output has %d floats, want %d for %d samples", len(out), n*mm.outRow, n)
	}
	if taps != nil && len(taps) != len(mm.tapRows) {
		return fmt.Errorf("run: %d tap buffers, the artifact has %d taps", len(taps), len(mm.tapRows))
	}
	for i, t := range taps {
		if t != nil && len(t) != n*mm.tapRows[i] {
			return fmt.Errorf("run: tap %d has %d floats, want %d for %d samples", i, len(t), n*mm.tapRows[i], n)
		}
	}
	for i := 0; i < n; {
		b := mm.Pick(n - i)
		k := min(b, n-i)
		m := mm.Model(b)
		var chunkTaps [][]float32
		if taps != nil {
			chunkTaps = make([][]float32, len(taps))
		}
		if k == b {
			for j, t := range taps {
				if t != nil {
					chunkTaps[j] = t[i*mm.tapRows[j] : (i+k)*mm.tapRows[j]]
				}
			}
			if err := runOne(m, in[i*mm.inRow:(i+k)*mm.inRow], out[i*mm.outRow:(i+k)*mm.outRow], chunkTaps); err != nil {
				return err
			}
		} else {
			// Pad with zero samples; keep the first k rows of each result.
			pin := make([]float32, b*mm.inRow)
			copy(pin, in[i*mm.inRow:(i+k)*mm.inRow])
			pout := make([]float32, b*mm.outRow)
			for j, t := range taps {
				if t != nil {
					chunkTaps[j] = make([]float32, b*mm.tapRows[j])
				}
			}
			if err := runOne(m, pin, pout, chunkTaps); err != nil {
				return err
			}
			copy(out[i*mm.outRow:(i+k)*mm.outRow], pout)
			for j, t := range taps {
				if t != nil {
					copy(t[i*mm.tapRows[j]:(i+k)*mm.tapRows[j]], chunkTaps[j])
				}
			}
		}
		i += k
	}
	return nil
}

// runOne runs m, with RunTaps when some tap is wanted.
func runOne(m *Model, in, out []float32, taps [][]float32) error {
	if full := fullTaps(m, taps); full != nil {
		return m.RunTaps(in, out, full)
	}
	return m.Run(in, out)
}

// fullTaps returns taps with nil entries replaced by scratch buffers of m's
// tap sizes (Model.RunTaps fills all or none), or nil if taps has no entry.
func fullTaps(m *Model, taps [][]float32) [][]float32 {
	any := false
	for _, t := range taps {
		any = any || t != nil
	}
	if !any {
		return nil
	}
	full := make([][]float32, len(taps))
	for i, t := range taps {
		if t == nil {
			t = make([]float32, m.taps[i].n)
		}
		full[i] = t
	}
	return full
}

// Close closes every program (the first last: the others read its weights).
func (mm *MultiModel) Close() error {
	var err error
	for i := len(mm.models) - 1; i >= 0; i-- {
		if e := mm.models[i].Close(); e != nil && err == nil {
			err = e
		}
	}
	mm.models = nil
	return err
}
