package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/kiln-dev/kiln/experiment"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/trainer"
)

// experimentBackends are the training executors kiln experiment can use,
// by --backend name.
var experimentBackends = map[string]func(threads int) (trainer.Executor, error){
	"interp": func(threads int) (trainer.Executor, error) { return trainer.Interpreter{Threads: threads}, nil },
	"compiled": func(threads int) (trainer.Executor, error) {
		return compiledKeep{&trainer.Compiled{Threads: threads, Interp: trainer.Interpreter{Threads: threads}}}, nil
	},
}

// compiledKeep is the compiled training backend (trainer.Compiled, whose
// evaluation runs compiled too) with experiment.KeepInferer, so that the
// dead-unit fraction is measured during its evaluations too.
type compiledKeep struct{ *trainer.Compiled }

// InferKeep implements experiment.KeepInferer with the compiled model: the
// kept values are compiled as extra outputs (trainer.Compiled.InferKeep).
func (c compiledKeep) InferKeep(g *ir.Graph, params, inputs map[string]*tensor.Tensor, keep []int) (*tensor.Tensor, map[int]*tensor.Tensor, error) {
	return c.Compiled.InferKeep(g, params, inputs, keep)
}

func init() {
	register(&command{name: "experiment", args: "rq1|depth|scaling|size|ensemble|precision|nets --out DIR",
		summary: "run a training experiment of EXPERIMENTS.md: runs, summary table and plots",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			out := fs.String("out", "", "write the runs, curves.csv, summary.csv/.md and the PNG plots to `DIR`")
			quick := fs.Bool("quick", false, fmt.Sprintf("smoke mode: %d training and %d test images, batch %d, 1 epoch, 1 seed, width and depth at most 1", experiment.QuickTrain, experiment.QuickTest, experiment.QuickBatch))
			seeds := fs.Int("seeds", 0, "train seeds 1..`N` of every network (default 3; 1 with --quick)")
			firstSeed := fs.Int("first-seed", 1, "train only seeds `K`..N (the others are read from --out for the summary)")
			epochs := fs.Int("epochs", 0, "train `E` epochs instead of the experiment's recipe")
			dataDir := fs.String("data", "fashion-mnist", "`DATA`: fashion-mnist or a directory of Fashion-MNIST IDX files")
			limitTrain := fs.Int("limit-train", 0, "use the first `N` training images only (0: all, or the quick mode's)")
			limitTest := fs.Int("limit-test", 0, "evaluate on the first `M` test images only (0: all, or the quick mode's)")
			backend := fs.String("backend", "interp", "training `executor`: "+strings.Join(backendNames(), ", "))
			threads := fs.Int("threads", 0, "interpreter threads (0: all CPUs)")
			batch := fs.Int("batch", 32, "precision: images in the fixed batch")
			depths := fs.String("depths", "1,2,4", "precision: depth multipliers, comma-separated")
			replot := fs.Bool("replot", false, "precision: only redraw DIR/precision.png from DIR/precision_tensors.csv")
			nets := fs.String("nets", "", "train only the networks with these `labels`, comma-separated (see kiln experiment nets)")
			width := fs.Float64("width", 0, "set the width constant w of the networks that have one to `W` (the scaling experiment's)")
			lr := fs.Float64("lr", 0, "learning `rate` instead of the recipe's")
			decayEvery := fs.Float64("decay-every", 0, "decay the learning rate by 0.94 every `F` epochs instead of the recipe's 0.2")
			thresholds := fs.String("thresholds", "", "report epochs and seconds to these test accuracies, in `percent`, comma-separated (default 88,90,91,92)")
			summarize := fs.Bool("summarize", false, "train nothing: rebuild curves, summary, significance tests, ensembles and plots from the runs in DIR")
			return func(args []string) error {
				if len(args) != 1 {
					return usagef("want one experiment name (%s, precision or nets)", strings.Join(experiment.Names(), ", "))
				}
				name := args[0]
				if name == "nets" {
					return printExperimentNets(e)
				}
				if _, ok := experiment.Experiments()[name]; !ok && name != "precision" {
					return usagef("unknown experiment %q: want %s, precision or nets", name, strings.Join(experiment.Names(), ", "))
				}
				if *out == "" {
					return usagef("--out DIR is required")
				}
				if *seeds < 0 || *epochs < 0 || *limitTrain < 0 || *limitTest < 0 {
					return usagef("--seeds, --epochs, --limit-train and --limit-test must not be negative")
				}
				if *firstSeed < 1 {
					return usagef("--first-seed %d: seeds start at 1", *firstSeed)
				}
				if !(*width >= 0 && *lr >= 0 && *decayEvery >= 0) {
					return usagef("--width, --lr and --decay-every must not be negative")
				}
				var thr []float64
				for _, f := range splitList(*thresholds) {
					v, err := strconv.ParseFloat(f, 64)
					if err != nil || !(v > 0 && v <= 100) {
						return usagef("--thresholds %q: want percentages in (0, 100] separated by commas", *thresholds)
					}
					thr = append(thr, v/100)
				}
				if name == "precision" && *replot {
					all, err := experiment.ReadPrecisionTensors(filepath.Join(*out, "precision_tensors.csv"))
					if err != nil {
						return err
					}
					return experiment.PrecisionPlot(*out, all)
				}
				if name == "precision" {
					var ds []int
					for _, f := range strings.Split(*depths, ",") {
						d, err := strconv.Atoi(strings.TrimSpace(f))
						if err != nil || d <= 0 {
							return usagef("--depths %q: want positive integers separated by commas", *depths)
						}
						ds = append(ds, d)
					}
					rows, _, err := experiment.PrecisionStudy(experiment.PrecisionOptions{Out: *out, Data: *dataDir, Batch: *batch, Seeds: *seeds, Depths: ds, Log: e.stdout})
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "%d configurations; table in %s/precision.md\n", len(rows), *out)
					return nil
				}
				mk, ok := experimentBackends[*backend]
				if !ok {
					return usagef("--backend %s: have %s", *backend, strings.Join(backendNames(), ", "))
				}
				ex, err := mk(*threads)
				if err != nil {
					return err
				}
				if c, ok := ex.(io.Closer); ok {
					defer c.Close()
				}
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				results, err := experiment.Run(ctx, name, experiment.Options{
					Out: *out, Data: *dataDir, Quick: *quick, Seeds: *seeds, FirstSeed: *firstSeed, Epochs: *epochs,
					LimitTrain: *limitTrain, LimitTest: *limitTest, Exec: ex, Log: e.stdout,
					Nets: splitList(*nets), Width: *width, LR: *lr, DecayEvery: *decayEvery, Summarize: *summarize, Thresholds: thr,
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%d runs; summary in %s/summary.md, plots %s\n", len(results), *out, strings.Join(experiment.PlotFiles, ", "))
				return nil
			}
		}})
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func backendNames() []string {
	var out []string
	for k := range experimentBackends {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// printExperimentNets prints every network of the experiments with its
// learnable parameters and MACs per image.
func printExperimentNets(e *env) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "experiment\tnetwork\tfile\tconstants\tparameters\tMACs\t")
	for _, name := range experiment.Names() {
		for _, n := range experiment.Experiments()[name].Nets {
			p, m, err := experiment.NetStats(n)
			if err != nil {
				return err
			}
			var cs []string
			for _, k := range []string{"depth", "w", "scale", "drop"} {
				if v, ok := n.Params[k]; ok {
					cs = append(cs, fmt.Sprintf("%s=%g", k, v))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", name, n.Label, n.File, strings.Join(cs, " "), commas(p), commas(m))
		}
	}
	return tw.Flush()
}
