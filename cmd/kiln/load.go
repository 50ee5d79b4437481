package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// netFlags are the flags shared by every command that elaborates a network.
type netFlags struct {
	batch      int
	batches    []int // --batch 1,8,32 (kiln build); nil when one size was given
	multiBatch bool  // this command accepts several batch sizes
	input      string
	importPath dirList
	// Resource limits (docs/LIMITS.md).
	maxBatch                      int
	maxTensorBytes, maxParamBytes int64
	maxMACs                       macsFlag // kiln check and build only (registerMACs); 0: no limit
}

// dirList is a repeatable flag collecting directories.
type dirList []string

func (d *dirList) String() string { return strings.Join(*d, ",") }

func (d *dirList) Set(s string) error {
	if s == "" {
		return fmt.Errorf("empty directory")
	}
	*d = append(*d, s)
	return nil
}

func (f *netFlags) register(fs *flag.FlagSet) {
	f.batch = 1
	fs.Var(batchFlag{f}, "batch", "batch size `N` bound at build time (kiln build and check: a list such as 1,8,32)")
	fs.StringVar(&f.input, "input", "", "per-sample input shape `CxHxW` overriding the network's declared one (e.g. 3x139x139)")
	fs.Var(&f.importPath, "import-path", "also resolve .kiln imports inside `DIR` (repeatable); by default only the source's directory tree and the built-in networks")
	fs.IntVar(&f.maxBatch, "max-batch", 4096, "refuse a --batch above `N` (code generation grows with the batch)")
	fs.Int64Var(&f.maxTensorBytes, "max-tensor-bytes", 1<<30, "refuse a network with any tensor over `BYTES`")
	fs.Int64Var(&f.maxParamBytes, "max-param-bytes", 4<<30, "refuse a network whose parameters total over `BYTES`")
}

func (f *netFlags) options() (dsl.Options, error) {
	if err := f.checkBatches(); err != nil {
		return dsl.Options{}, err
	}
	if f.batch <= 0 {
		return dsl.Options{}, usagef("--batch must be positive, got %d", f.batch)
	}
	if f.maxBatch > 0 && f.batch > f.maxBatch {
		return dsl.Options{}, usagef("--batch %d exceeds the limit %d (raise it with --max-batch)", f.batch, f.maxBatch)
	}
	opts := dsl.Options{Batch: f.batch, ImportPath: f.importPath,
		Limits: dsl.Limits{MaxTensorBytes: f.maxTensorBytes, MaxParamBytes: f.maxParamBytes}}
	if f.input != "" {
		s, err := tensor.ParseShape(f.input)
		if err != nil {
			return dsl.Options{}, usagef("--input: %v", err)
		}
		opts.InputShape = s
	}
	return opts, nil
}

// load elaborates FILE with the batch and input shape of the flags.
func (f *netFlags) load(file string) (*ir.Graph, error) {
	opts, err := f.options()
	if err != nil {
		return nil, err
	}
	return loadNet(file, opts)
}

func builtinNames() []string { return archs.Names() }

// warnOut receives the DSL's warnings (printed as file:line:col: warning:
// ...); run sets it to the command's stderr.
var warnOut io.Writer = os.Stderr

// loadNet elaborates FILE: a path on disk, or a built-in network name.
// Warnings go to warnOut.
func loadNet(file string, opts dsl.Options) (*ir.Graph, error) {
	if opts.Warn == nil {
		opts.Warn = func(d *dsl.Diagnostic) { fmt.Fprintln(warnOut, d) }
	}
	if _, err := os.Stat(file); err != nil {
		name := strings.TrimSuffix(file, ".kiln")
		for _, b := range archs.Names() {
			if b == name {
				opts.FS = archs.FS
				return dsl.LoadFile(name+".kiln", opts)
			}
		}
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: no such file, and not a built-in network (%s)", file, strings.Join(archs.Names(), ", "))
		}
		return nil, err
	}
	return dsl.LoadFile(file, opts)
}
