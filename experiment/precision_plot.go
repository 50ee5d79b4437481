package experiment

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// PrecisionPlotFile is the precision study's plot.
const PrecisionPlotFile = "precision.png"

// ReadPrecisionTensors reads precision_tensors.csv (PrecisionTensorsHeader).
func ReadPrecisionTensors(path string) ([]TensorErr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var out []TensorErr
	line := 0
	for sc.Scan() {
		line++
		if line == 1 {
			if sc.Text() != PrecisionTensorsHeader {
				return nil, fmt.Errorf("%s:1: header %q, want %q", path, sc.Text(), PrecisionTensorsHeader)
			}
			continue
		}
		fs := strings.Split(sc.Text(), ",")
		if len(fs) != 8 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 8", path, line, len(fs))
		}
		d, err1 := strconv.Atoi(fs[1])
		s, err2 := strconv.ParseUint(fs[2], 10, 64)
		n, err3 := strconv.Atoi(fs[4])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("%s:%d: bad depth, seed or numel", path, line)
		}
		num := func(s string) float64 {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return math.NaN()
			}
			return v
		}
		out = append(out, TensorErr{Net: fs[0], Depth: d, Seed: s, Tensor: fs[3], Numel: n, MaxRef: num(fs[5]), Err: num(fs[6]), ErrPerturbed: num(fs[7])})
	}
	return out, sc.Err()
}

// PrecisionPlot renders OUT/precision.png from the per-tensor errors: per
// network, the median over gradient tensors (geometric mean over seeds,
// band min–max over seeds) against depth, for float32 and for the perturbed-float64
// control, on a log scale.
func PrecisionPlot(out string, all []TensorErr) error {
	type key struct {
		net   string
		depth int
		seed  uint64
	}
	f32, ctl := map[key][]float64{}, map[key][]float64{}
	nets := []string{}
	for _, e := range all {
		k := key{e.Net, e.Depth, e.Seed}
		if !math.IsNaN(e.Err) {
			f32[k] = append(f32[k], e.Err)
		}
		if !math.IsNaN(e.ErrPerturbed) {
			ctl[k] = append(ctl[k], e.ErrPerturbed)
		}
		found := false
		for _, n := range nets {
			found = found || n == e.Net
		}
		if !found {
			nets = append(nets, e.Net)
		}
	}
	p := plot.New()
	p.Title.Text = "float32 vs float64 gradients: median over tensors (band: min–max over seeds)"
	p.X.Label.Text = "depth (× the A and B blocks)"
	p.Y.Label.Text = "max|g − g64| / max|g64|"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: 1}
	p.Legend.Top, p.Legend.Left = true, true
	i := 0
	for _, net := range nets {
		for _, src := range []struct {
			name string
			m    map[key][]float64
		}{{"float32", f32}, {"control", ctl}} {
			byDepth := map[int][]float64{}
			for k, v := range src.m {
				if k.net != net {
					continue
				}
				s := append([]float64(nil), v...)
				sort.Float64s(s)
				if m := median(s); m > 0 {
					byDepth[k.depth] = append(byDepth[k.depth], m)
				}
			}
			var depths []int
			for d := range byDepth {
				depths = append(depths, d)
			}
			sort.Ints(depths)
			if len(depths) == 0 {
				continue
			}
			pts, band := plotter.XYs{}, plotter.XYs{}
			for _, d := range depths {
				pts = append(pts, plotter.XY{X: float64(d), Y: math.Exp(meanLog(byDepth[d]))})
				band = append(band, plotter.XY{X: float64(d), Y: spread(byDepth[d])[2]})
			}
			for j := len(depths) - 1; j >= 0; j-- {
				band = append(band, plotter.XY{X: float64(depths[j]), Y: spread(byDepth[depths[j]])[1]})
			}
			col := plotutil.Color(i)
			if len(depths) > 1 {
				poly, err := plotter.NewPolygon(band)
				if err != nil {
					return err
				}
				r, g, b, _ := col.RGBA()
				poly.Color = colorA(r, g, b, 50)
				poly.LineStyle.Width = 0
				p.Add(poly)
			}
			line, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			line.Color, sc.Color, sc.Shape = col, col, plotutil.Shape(i)
			if src.name == "control" {
				line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			p.Add(line, sc)
			p.Legend.Add(net+", "+src.name, line, sc)
			i++
		}
	}
	p.Y.Max = math.Max(p.Y.Max, 1) * 30 // room for the legend above the lines
	return p.Save(16*vg.Centimeter, 12*vg.Centimeter, filepath.Join(out, PrecisionPlotFile))
}

// meanLog is the mean of the logarithms (the line is the geometric mean
// over seeds, as the axis is logarithmic).
func meanLog(vs []float64) float64 {
	s := 0.0
	for _, v := range vs {
		s += math.Log(v)
	}
	return s / float64(len(vs))
}
