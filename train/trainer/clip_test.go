package trainer

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestResumeKeepsClipping trains the small net with gradient clipping
// (--clip-grad-norm and --clip-grad-value) for 2 epochs straight and for 1
// epoch then resumed from the checkpoint alone: the checkpoint's settings
// metadata must carry both thresholds, the resumed run must read them back
// and end byte for byte where the straight one does, and the clipped run
// must differ from the unclipped one (so the thresholds do clip here). An
// unclipped run's settings do not mention clipping at all, so checkpoints
// written before clipping existed read back as unclipped.
func TestResumeKeepsClipping(t *testing.T) {
	ctx := context.Background()
	clipped := settings()
	clipped.Optimizer.ClipGradNorm = 0.05
	clipped.Optimizer.ClipGradValue = 0.02
	straight := t.TempDir()
	if err := newRun(t, straight, clipped, 2, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := t.TempDir()
	if err := newRun(t, stopped, clipped, 1, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := tensor.ReadSafetensorsFile(filepath.Join(stopped, CheckpointFile))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Metadata["settings"]; !strings.Contains(s, `"ClipGradNorm":0.05`) || !strings.Contains(s, `"ClipGradValue":0.02`) {
		t.Errorf("checkpoint settings %s lack the clipping thresholds", s)
	}
	c, err := ReadCheckpoint(stopped)
	if err != nil {
		t.Fatal(err)
	}
	if c.Settings.Optimizer.ClipGradNorm != 0.05 || c.Settings.Optimizer.ClipGradValue != 0.02 {
		t.Fatalf("resumed optimizer %+v, want clip-grad-norm 0.05 and clip-grad-value 0.02", c.Settings.Optimizer)
	}
	if err := resume(t, stopped, 2).Do(ctx); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{CheckpointFile, WeightsFile} {
		if !bytes.Equal(readFile(t, filepath.Join(stopped, file)), readFile(t, filepath.Join(straight, file))) {
			t.Errorf("%s of the resumed clipped run differs from the straight run's", file)
		}
	}
	plain := t.TempDir()
	if err := newRun(t, plain, settings(), 2, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(readFile(t, filepath.Join(plain, WeightsFile)), readFile(t, filepath.Join(straight, WeightsFile))) {
		t.Error("the clipped and unclipped runs trained the same weights: the thresholds clip nothing")
	}
	pf, err := tensor.ReadSafetensorsFile(filepath.Join(plain, CheckpointFile))
	if err != nil {
		t.Fatal(err)
	}
	if s := pf.Metadata["settings"]; strings.Contains(s, "Clip") {
		t.Errorf("an unclipped run's settings mention clipping: %s", s)
	}
}
