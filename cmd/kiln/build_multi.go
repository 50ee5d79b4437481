package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// buildMultiBatch is kiln build --batch 1,8,32: the network is elaborated
// and compiled once per batch size (each its own kernels, arena and
// manifest) and written as one executable with payload format 3
// (rt.AppendPayloadMulti), whose weights are stored once. Weight packing
// depends on the weights and the channel block only, never on the batch;
// this is checked, not assumed: every program's weights blob must be
// byte-identical to the first's, or the build fails saying which differs.
func buildMultiBatch(e *env, nf *netFlags, pf *pipeFlags, bt buildTarget, file, weights, stripPrefix, out string, taps []string, imf *imageFlags) error {
	batches := nf.batchList()
	var cs []*compiled
	var params map[string]*tensor.Tensor
	err := interruptible(e.stderr, "build", func(ctx context.Context) error {
		for _, b := range batches {
			nf.batch = b
			g, err := nf.load(file)
			if err != nil {
				return err
			}
			if err := nf.checkMACs(g); err != nil {
				return fmt.Errorf("--batch %d: %w", b, err)
			}
			if params == nil {
				if params, err = loadWeightsStrip(g, weights, stripPrefix); err != nil {
					return err
				}
			}
			ident, err := buildIdentity(file, g, weights)
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			p := *pf // each program runs the same pipeline
			c, err := compileNetCtx(ctx, g, params, bt, &p, e.stderr, taps)
			if err != nil {
				return fmt.Errorf("--batch %d: %w", b, err)
			}
			c.prog.Manifest.Build = ident
			c.prog.Manifest.Preprocess = preprocessFor(g.Name, g.Inputs()[0].Type.Shape)
			if err := imf.apply(&c.prog.Manifest, g.Inputs()[0].Type.Shape); err != nil {
				return err
			}
			if len(cs) > 0 && !bytes.Equal(c.prog.Weights, cs[0].prog.Weights) {
				return fmt.Errorf("the weights blob compiled for batch %d (%d bytes) differs from batch %d's (%d bytes): cannot share one weights section",
					b, len(c.prog.Weights), batches[0], len(cs[0].prog.Weights))
			}
			cs = append(cs, c)
		}
		runner, err := runnerFor(bt)
		if err != nil {
			return err
		}
		exe, err := os.Open(runner)
		if err != nil {
			return err
		}
		defer exe.Close()
		progs := make([]rt.Program, len(cs))
		for i, c := range cs {
			progs[i] = rt.Program{Manifest: c.prog.Manifest, SharedObject: c.so}
		}
		return writeExecutableAtomic(ctx, out, func(w io.Writer) error {
			bw := bufio.NewWriterSize(w, 1<<20)
			if err := rt.AppendPayloadMulti(bw, exe, progs, cs[0].prog.Weights); err != nil {
				return err
			}
			return bw.Flush()
		})
	})
	if err != nil {
		return err
	}
	if weights == "" {
		fmt.Fprintf(e.stderr, proceduralWarning, out)
	}
	st, _ := os.Stat(out)
	var stats []string
	for _, c := range cs {
		stats = append(stats, fmt.Sprintf("batch %d: %s", c.prog.Manifest.Batch, c.stats))
	}
	fmt.Fprintf(e.stdout, "built %s (%s, %s, batches %s, %.1f MiB, weights stored once):\n  %s\n", out, bt.name,
		isaList(cs[0].prog.Manifest.ISAs), joinInts(batches), float64(st.Size())/(1<<20), strings.Join(stats, "\n  "))
	return nil
}
