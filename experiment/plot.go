package experiment

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// PlotFiles are the PNGs Plots writes into an experiment directory: test
// top-1 accuracy and mean training loss against epoch and against the
// run's elapsed wall seconds, and the dead-unit fraction against epoch.
var PlotFiles = []string{"accuracy_epoch.png", "loss_epoch.png", "accuracy_seconds.png", "loss_seconds.png", "dead_epoch.png"}

// colorA is the 16-bit RGB of color.Color.RGBA with alpha a.
func colorA(r, g, b uint32, a uint8) color.Color {
	return color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: a}
}

// series is one network's curve: per epoch (from 1) the mean over the
// seeds that reached that epoch, and the min and max (the band).
type series struct {
	label         string
	x, y, lo, hi  []float64
	xSeconds      []float64
	hasFiniteData bool
}

// curve computes the mean and min–max band of metric over the runs of
// net, epoch by epoch; NaN values (a run that has no such epoch, or no
// measurement) are left out of that epoch.
func curve(results []*Result, net string, metric func(Epoch) float64) series {
	s := series{label: net}
	for e := 1; ; e++ {
		var ys, xs []float64
		any := false
		for _, r := range results {
			if r.Net != net || e > len(r.Epochs) {
				continue
			}
			any = true
			ep := r.Epochs[e-1]
			if v := metric(ep); !math.IsNaN(v) && !math.IsInf(v, 0) {
				ys = append(ys, v)
				xs = append(xs, ep.ElapsedS)
			}
		}
		if !any {
			return s
		}
		if len(ys) == 0 {
			continue
		}
		mean, lo, hi := 0.0, math.Inf(1), math.Inf(-1)
		for _, v := range ys {
			mean += v
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		mean /= float64(len(ys))
		xm := 0.0
		for _, v := range xs {
			xm += v
		}
		s.x = append(s.x, float64(e))
		s.xSeconds = append(s.xSeconds, xm/float64(len(xs)))
		s.y, s.lo, s.hi = append(s.y, mean), append(s.lo, lo), append(s.hi, hi)
		s.hasFiniteData = true
	}
}

// Plots renders PlotFiles into dir: one line per network (the mean over
// seeds) with a translucent band from the minimum to the maximum over the
// seeds. The dead-unit plot is written only when some run measured it.
func Plots(dir string, ex *Experiment, results []*Result) error {
	type spec struct {
		file, ylabel string
		seconds      bool
		metric       func(Epoch) float64
	}
	specs := []spec{
		{PlotFiles[0], "test top-1 accuracy (%)", false, func(e Epoch) float64 { return 100 * e.Top1 }},
		{PlotFiles[1], "training loss", false, func(e Epoch) float64 { return e.TrainLoss }},
		{PlotFiles[2], "test top-1 accuracy (%)", true, func(e Epoch) float64 { return 100 * e.Top1 }},
		{PlotFiles[3], "training loss", true, func(e Epoch) float64 { return e.TrainLoss }},
		{PlotFiles[4], "dead units before the pool (fraction)", false, func(e Epoch) float64 { return e.DeadFrac }},
	}
	nets := labels(results)
	for _, sp := range specs {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: mean over seeds, band min–max", ex.Name)
		p.X.Label.Text = "epoch"
		if sp.seconds {
			p.X.Label.Text = "wall seconds (training and evaluation)"
		}
		p.Y.Label.Text = sp.ylabel
		p.Legend.Top = sp.file != PlotFiles[0] && sp.file != PlotFiles[2] // accuracy rises: legend bottom right
		drawn := false
		for i, net := range nets {
			s := curve(results, net, sp.metric)
			if !s.hasFiniteData {
				continue
			}
			x := s.x
			if sp.seconds {
				x = s.xSeconds
			}
			col := plotutil.Color(i)
			if len(x) > 1 {
				band := make(plotter.XYs, 0, 2*len(x))
				for k := range x {
					band = append(band, plotter.XY{X: x[k], Y: s.hi[k]})
				}
				for k := len(x) - 1; k >= 0; k-- {
					band = append(band, plotter.XY{X: x[k], Y: s.lo[k]})
				}
				poly, err := plotter.NewPolygon(band)
				if err != nil {
					return fmt.Errorf("%s: %w", sp.file, err)
				}
				r, g, b, _ := col.RGBA()
				poly.Color = colorA(r, g, b, 60)
				poly.LineStyle.Width = 0
				p.Add(poly)
			}
			pts := make(plotter.XYs, len(x))
			for k := range x {
				pts[k] = plotter.XY{X: x[k], Y: s.y[k]}
			}
			line, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				return fmt.Errorf("%s: %w", sp.file, err)
			}
			line.Color, sc.Color = col, col
			line.Width = vg.Points(1.5)
			sc.Shape = plotutil.Shape(i)
			p.Add(line, sc)
			p.Legend.Add(net, line, sc)
			drawn = true
		}
		if !drawn && sp.file == PlotFiles[4] {
			continue
		}
		if err := p.Save(16*vg.Centimeter, 11*vg.Centimeter, filepath.Join(dir, sp.file)); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(dir, sp.file), err)
		}
	}
	return nil
}
