package trainer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// CheckpointFile and WeightsFile are the files a run keeps in its directory
// (besides MetricsFile).
const (
	// CheckpointFile holds everything a resumed run needs: parameters,
	// BatchNorm buffers, optimizer state ("optim." names), the EMA
	// ("ema." names) and, as safetensors __metadata__, the settings and
	// the position (epoch, step) of the run.
	CheckpointFile = "checkpoint.safetensors"
	// WeightsFile holds the network's parameters and buffers alone, under
	// the network's names (the EMA's values when the run keeps one, as
	// those are what it evaluates): the file `kiln build --weights` and
	// `kiln run --weights` take.
	WeightsFile = "final.safetensors"
	// CheckpointFormat is the checkpoint's "format" metadata.
	CheckpointFormat = "kiln-train-checkpoint/1"
)

// EMAPrefix prefixes the names of the EMA tensors in a checkpoint.
const EMAPrefix = "ema."

// Position is where a run stands: Epoch epochs complete and Step steps of
// the next one done, counted in batches of Settings.Batch images (a
// data-parallel step of N ranks counts N, so the position is the same on
// any number of ranks; see doDist). Mid-epoch (Step > 0, after an interrupt) it also
// carries the running sum of that epoch's losses and its training seconds,
// so that the epoch's metrics come out as if it had not been interrupted.
type Position struct {
	Epoch, Step, GlobalStep int
	LossSum                 float64
	TrainSeconds            float64
}

// Checkpoint is a checkpoint's content.
type Checkpoint struct {
	Settings Settings
	Pos      Position
	// Tensors are the network's params and buffers, the optimizer state
	// and the EMA, by checkpoint name.
	Tensors map[string]*tensor.Tensor
}

// metadata is the checkpoint's __metadata__. Floats are written with
// strconv's shortest exact form, so they read back bit for bit; the
// training seconds and loss sum are written only mid-epoch, so that the
// checkpoints of a run and of the same run interrupted and resumed are
// byte for byte the same at every epoch end.
func (c *Checkpoint) metadata() (map[string]string, error) {
	s, err := json.Marshal(c.Settings)
	if err != nil {
		return nil, err
	}
	m := map[string]string{
		"format":      CheckpointFormat,
		"network":     c.Settings.Network,
		"settings":    string(s),
		"epoch":       strconv.Itoa(c.Pos.Epoch),
		"step":        strconv.Itoa(c.Pos.Step),
		"global_step": strconv.Itoa(c.Pos.GlobalStep),
		"rng":         "counter-based: draws are splitmix64 hashes of (seed, purpose, epoch, position); the state is seed, epoch and step",
	}
	if c.Pos.Step > 0 {
		m["loss_sum"] = strconv.FormatFloat(c.Pos.LossSum, 'g', -1, 64)
		m["train_seconds"] = strconv.FormatFloat(c.Pos.TrainSeconds, 'g', -1, 64)
	}
	return m, nil
}

// Write writes the checkpoint to dir/CheckpointFile atomically
// (tensor.WriteSafetensorsFile: temporary file, fsync, rename).
func (c *Checkpoint) Write(dir string) error {
	m, err := c.metadata()
	if err != nil {
		return err
	}
	return tensor.WriteSafetensorsFile(filepath.Join(dir, CheckpointFile), c.Tensors, m)
}

// ReadCheckpoint reads dir/CheckpointFile, checking its format and
// metadata; the tensors are checked against the network by the caller.
func ReadCheckpoint(dir string) (*Checkpoint, error) {
	path := filepath.Join(dir, CheckpointFile)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--resume %s: no checkpoint (%v)", dir, err)
	}
	f, err := tensor.ReadSafetensorsFile(path)
	if err != nil {
		return nil, err
	}
	m := f.Metadata
	if m["format"] != CheckpointFormat {
		return nil, fmt.Errorf("%s: not a kiln train checkpoint (metadata format %q, want %q)", path, m["format"], CheckpointFormat)
	}
	c := &Checkpoint{Tensors: f.Tensors}
	if err := json.Unmarshal([]byte(m["settings"]), &c.Settings); err != nil {
		return nil, fmt.Errorf("%s: metadata settings: %v", path, err)
	}
	ints := []struct {
		key string
		v   *int
	}{{"epoch", &c.Pos.Epoch}, {"step", &c.Pos.Step}, {"global_step", &c.Pos.GlobalStep}}
	for _, k := range ints {
		v, err := strconv.Atoi(m[k.key])
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%s: metadata %s = %q is not a non-negative integer", path, k.key, m[k.key])
		}
		*k.v = v
	}
	if c.Pos.Step > 0 {
		for _, k := range []struct {
			key string
			v   *float64
		}{{"loss_sum", &c.Pos.LossSum}, {"train_seconds", &c.Pos.TrainSeconds}} {
			v, err := strconv.ParseFloat(m[k.key], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: metadata %s = %q: %v", path, k.key, m[k.key], err)
			}
			*k.v = v
		}
	}
	return c, nil
}
