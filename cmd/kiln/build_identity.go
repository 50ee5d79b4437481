package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/ir"
	rt "github.com/kiln-dev/kiln/runtime"
)

// buildIdentity is the manifest's Build record for a network loaded from
// file (g, before the pass pipeline) with the weights file weights ("" for
// procedural weights): kiln's version, the SHA-256 of the IR as printed
// (which covers the source and its imports as elaborated) and of the
// weights file.
func buildIdentity(file string, g *ir.Graph, weights string) (*rt.BuildInfo, error) {
	h := sha256.New()
	bw := bufio.NewWriter(h)
	if err := ir.Print(bw, g); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	bi := &rt.BuildInfo{KilnVersion: buildVersion(), Source: file, SourceHash: hex.EncodeToString(h.Sum(nil)), Weights: weights, Procedural: weights == ""}
	if weights != "" {
		f, err := os.Open(weights)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		wh := sha256.New()
		if _, err := io.Copy(wh, f); err != nil {
			return nil, fmt.Errorf("%s: %w", weights, err)
		}
		bi.WeightsHash = hex.EncodeToString(wh.Sum(nil))
	}
	return bi, nil
}

// proceduralWarning is printed by kiln build for an artifact without
// --weights.
const proceduralWarning = "warning: no --weights: %s carries procedural weights (deterministic pseudo-random values, not a trained network); its outputs are meaningless as predictions\n"

// imageFlags are kiln build's image-path options: the class names and the
// preprocessing --image applies, overriding the built-in defaults
// (preprocessFor).
type imageFlags struct {
	labels    string
	mean, std string
	cropPct   float64
	size      int
}

func (f *imageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.labels, "labels", "", "class names for --image, one per line in output order, from `FILE` (as many lines as the network has outputs)")
	fs.StringVar(&f.mean, "mean", "", "--image preprocessing: per-channel mean `R,G,B` subtracted after scaling to [0,1] (default 0.5,0.5,0.5)")
	fs.StringVar(&f.std, "std", "", "--image preprocessing: per-channel standard deviation `R,G,B` (default 0.5,0.5,0.5)")
	fs.Float64Var(&f.cropPct, "crop-pct", 0, "--image preprocessing: fraction `P` in (0,1] kept by the center crop (default 0.875; 0.8975 for inception_resnet_v2)")
	fs.IntVar(&f.size, "size", 0, "--image preprocessing: crop side `S` (default and only accepted value: the input's H = W)")
}

// apply sets m's Labels and Preprocess from the flags; inShape is the
// network input's shape. Errors name the flag.
func (f *imageFlags) apply(m *rt.Manifest, inShape []int) error {
	set := f.mean != "" || f.std != "" || f.cropPct != 0 || f.size != 0
	if set {
		if m.Preprocess == nil {
			return usagef("--mean/--std/--crop-pct/--size: the network's input %v is not an RGB image (want [N, 3, S, S])", inShape)
		}
		pp := *m.Preprocess
		if f.mean != "" {
			v, err := parseRGB(f.mean, false)
			if err != nil {
				return usagef("--mean %s: %v", f.mean, err)
			}
			pp.Mean = v
		}
		if f.std != "" {
			v, err := parseRGB(f.std, true)
			if err != nil {
				return usagef("--std %s: %v", f.std, err)
			}
			pp.Std = v
		}
		if f.cropPct != 0 {
			if !(f.cropPct > 0 && f.cropPct <= 1) {
				return usagef("--crop-pct %g: want a value in (0, 1]", f.cropPct)
			}
			pp.CropPct = f.cropPct
		}
		if f.size != 0 && f.size != pp.Size {
			return usagef("--size %d: the network's input is %dx%d (the crop must match it)", f.size, pp.Size, pp.Size)
		}
		m.Preprocess = &pp
	}
	if f.labels != "" {
		labels, err := readLabels(f.labels)
		if err != nil {
			return err
		}
		classes := 1
		for _, d := range m.Output.Shape[1:] {
			classes *= d
		}
		if len(labels) != classes {
			return fmt.Errorf("--labels %s: %d names, the network has %d outputs", f.labels, len(labels), classes)
		}
		m.Labels = labels
	} else if m.Labels == nil {
		m.Labels = defaultLabels(m) // ImageNet's for the built-in networks
	}
	return nil
}

// maxLabelsBytes bounds a --labels file.
const maxLabelsBytes = 16 << 20

// readLabels reads one class name per line (trailing blank lines dropped).
func readLabels(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--labels: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLabelsBytes+1))
	if err != nil {
		return nil, fmt.Errorf("--labels %s: %w", path, err)
	}
	if len(b) > maxLabelsBytes {
		return nil, fmt.Errorf("--labels %s: over %d bytes", path, maxLabelsBytes)
	}
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return lines, nil
}

// parseRGB parses three comma-separated finite numbers (positive ones when
// positive is set).
func parseRGB(s string, positive bool) ([3]float64, error) {
	var v [3]float64
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return v, fmt.Errorf("want three comma-separated values R,G,B")
	}
	for i, p := range parts {
		x, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || x != x || x > 1e30 || x < -1e30 {
			return v, fmt.Errorf("%q is not a finite number", p)
		}
		if positive && x <= 0 {
			return v, fmt.Errorf("%q is not positive", p)
		}
		v[i] = x
	}
	return v, nil
}
