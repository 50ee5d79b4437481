package dsl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/alecthomas/participle/v2/lexer"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/ir"
)

// Options control loading and elaboration.
type Options struct {
	// Batch is the value of the batch dimension N of network inputs (default 1).
	Batch int
	// InputShape, if set, replaces the declared per-sample dimensions (all but
	// N) of the network's first input, e.g. [3, 139, 139].
	InputShape []int
	// FS, if set, is where LoadFile reads the file and where imports are
	// resolved; otherwise the operating system's file system is used.
	FS fs.FS
	// Lib is the library searched for an import that is not found relative to
	// the importing file; nil means the built-in networks (archs.FS).
	Lib fs.FS
	// Limits bound elaboration; zero fields take the defaults.
	Limits Limits
}

// Limits bound the work and size of an elaboration so that hostile or
// mistaken sources fail with a diagnostic instead of exhausting memory.
type Limits struct {
	MaxRepeat int // largest repeat count (default 10000)
	MaxSize   int // largest channel count, window size or input dimension (default 1<<24)
	MaxNodes  int // largest graph (default 1<<20 nodes)
	MaxSteps  int // most expression evaluations (default 1<<26)
}

func (l Limits) withDefaults() Limits {
	if l.MaxRepeat <= 0 {
		l.MaxRepeat = 10000
	}
	if l.MaxSize <= 0 {
		l.MaxSize = 1 << 24
	}
	if l.MaxNodes <= 0 {
		l.MaxNodes = 1 << 20
	}
	if l.MaxSteps <= 0 {
		l.MaxSteps = 1 << 26
	}
	return l
}

// LoadFile reads the network source at path (from opts.FS if set, else from
// disk), with its imports, and elaborates it into a graph. All syntax and
// elaboration errors are returned together as Diagnostics.
func LoadFile(path string, opts Options) (*ir.Graph, error) {
	src, err := readFile(opts.FS, path)
	if err != nil {
		return nil, err
	}
	return Load(path, src, opts)
}

// Load parses and elaborates the source src named filename. Imports are
// resolved relative to filename in opts.FS (or on disk).
func Load(filename string, src []byte, opts Options) (*ir.Graph, error) {
	dl := newDiagList()
	f := parseFile(filename, src, dl)
	return elaborate(f, opts, dl)
}

// Elaborate turns a parsed file (see ParseFile) into a graph: it loads the
// imports, checks every block of every file statically, then elaborates the
// file's network. See the package documentation for the naming rules.
func Elaborate(f *File, opts Options) (*ir.Graph, error) {
	dl := newDiagList()
	dl.addSource(f.Name, f.Src)
	return elaborate(f, opts, dl)
}

func elaborate(f *File, opts Options, dl *diagList) (*ir.Graph, error) {
	if opts.Lib == nil {
		opts.Lib = archs.FS
	}
	ld := &loader{opts: opts, dl: dl, units: map[string]*unit{}, loading: map[string]bool{}}
	root := &unit{file: f, fsys: opts.FS, key: unitKey(opts.FS, f.Name)}
	ld.units[root.key] = root
	ld.loading[root.key] = true
	ld.resolveImports(root)
	delete(ld.loading, root.key)
	for _, u := range ld.order {
		checkUnit(dl, u)
	}
	checkRecursion(dl, ld.order)
	if f.Network == nil {
		if !f.brokenNetwork {
			dl.add(ir.Pos{File: f.Name}, "no network declared in "+f.Name)
		}
		return nil, dl.err()
	}
	e := newElab(opts, dl)
	g := e.network(root, f.Network)
	if err := dl.err(); err != nil {
		return nil, err
	}
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("internal error: elaborated graph does not verify: %w", err)
	}
	return g, nil
}

// unit is a loaded file and the blocks visible in it: its own and those
// visible in the files it imports.
type unit struct {
	file   *File
	fsys   fs.FS // nil: disk
	key    string
	blocks map[string]*blockRef
	// broken names blocks, own or imported, whose declarations had syntax
	// errors.
	broken map[string]bool
}

// blockRef is a block together with the unit it was declared in (where the
// names it calls are resolved).
type blockRef struct {
	b *Block
	u *unit
}

type loader struct {
	opts    Options
	dl      *diagList
	units   map[string]*unit
	loading map[string]bool
	order   []*unit // dependencies before dependents
}

func unitKey(fsys fs.FS, name string) string {
	if fsys == nil {
		if abs, err := filepath.Abs(name); err == nil {
			name = abs
		}
		return "disk:" + name
	}
	return fmt.Sprintf("fs%p:%s", fsys, name)
}

func readFile(fsys fs.FS, name string) ([]byte, error) {
	if fsys == nil {
		return os.ReadFile(name)
	}
	return fs.ReadFile(fsys, name)
}

// resolveImports loads u's imports (recursively, each file once) and builds
// u's block scope: its own blocks and every block visible in the files it
// imports (imports are transitive). An imported file's network, if any, is
// ignored.
func (ld *loader) resolveImports(u *unit) {
	var imported []*unit
	var importPos []lexer.Position
	for _, imp := range u.file.Imports {
		v := ld.load(u, imp)
		if v != nil {
			imported = append(imported, v)
			importPos = append(importPos, imp.Pos)
		}
	}
	u.blocks = map[string]*blockRef{}
	u.broken = map[string]bool{}
	for n := range u.file.broken {
		u.broken[n] = true
	}
	for _, v := range imported {
		for n := range v.broken {
			u.broken[n] = true
		}
	}
	for _, b := range u.file.Blocks {
		if builtins[b.Name] != nil {
			ld.dl.errorf(b.Pos, "block %s has the name of a builtin function", b.Name)
			continue
		}
		if prev, dup := u.blocks[b.Name]; dup {
			ld.dl.errorf(b.Pos, "duplicate block %s (first defined at %s)", b.Name, irPos(prev.b.Pos))
			continue
		}
		u.blocks[b.Name] = &blockRef{b: b, u: u}
	}
	for i, v := range imported {
		names := make([]string, 0, len(v.blocks))
		for n := range v.blocks {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			ref := v.blocks[n]
			if prev, dup := u.blocks[n]; dup {
				if prev.u == u {
					ld.dl.errorf(prev.b.Pos, "block %s is also defined in imported file %s (at %s)", n, ref.u.file.Name, irPos(ref.b.Pos))
				} else if prev.b != ref.b {
					ld.dl.errorf(importPos[i], "imported block %s conflicts with the one in %s (at %s)", n, prev.u.file.Name, irPos(prev.b.Pos))
				}
				continue
			}
			u.blocks[n] = ref
		}
	}
	ld.order = append(ld.order, u)
}

// load finds, reads and parses the file imported by imp from u. It looks
// beside the importing file first, then in the library (adding ".kiln" to
// a bare name).
func (ld *loader) load(from *unit, imp *Import) *unit {
	type cand struct {
		fsys fs.FS
		name string
	}
	var cands []cand
	if from.fsys == nil {
		cands = append(cands, cand{nil, filepath.Join(filepath.Dir(from.file.Name), filepath.FromSlash(imp.Path))})
	} else {
		cands = append(cands, cand{from.fsys, path.Join(path.Dir(from.file.Name), imp.Path)})
	}
	if ld.opts.Lib != nil && !strings.HasPrefix(imp.Path, "/") {
		lib := path.Clean(imp.Path)
		cands = append(cands, cand{ld.opts.Lib, lib})
		if path.Ext(lib) == "" {
			cands = append(cands, cand{ld.opts.Lib, lib + ".kiln"})
		}
	}
	var firstErr error
	for _, c := range cands {
		if c.fsys != nil && !fs.ValidPath(c.name) {
			continue
		}
		key := unitKey(c.fsys, c.name)
		if ld.loading[key] {
			ld.dl.errorf(imp.Pos, "import cycle: %s imports %s, which is being loaded", from.file.Name, c.name)
			return nil
		}
		if u := ld.units[key]; u != nil {
			return u
		}
		src, err := readFile(c.fsys, c.name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			break
		}
		f := parseFile(c.name, src, ld.dl)
		u := &unit{file: f, fsys: c.fsys, key: key}
		ld.units[key] = u
		ld.loading[key] = true
		ld.resolveImports(u)
		delete(ld.loading, key)
		return u
	}
	msg := "file not found"
	if firstErr != nil && !errors.Is(firstErr, fs.ErrNotExist) {
		msg = firstErr.Error()
	}
	ld.dl.errorf(imp.Pos, "cannot import %q: %s", imp.Path, msg)
	return nil
}
