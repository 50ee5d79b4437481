package dsl

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

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
	// ImportPath lists directories on disk searched for an import after the
	// importing file's directory (kiln's --import-path). Imports resolve
	// only inside the top-level file's directory tree, these directories'
	// trees, opts.FS and Lib (see loader.load).
	ImportPath []string
	// Limits bound elaboration; zero fields take the defaults.
	Limits Limits
	// Params overrides the defaults of the network's untyped (constant)
	// parameters by name, e.g. {"depth": 2, "scale": 0.1}; an integral
	// value is an integer. Naming a parameter the network does not declare
	// is an error at the network's position.
	Params map[string]float64
	// Warn, if set, receives each warning (Severity SeverityWarning) of a
	// load that succeeds, in source order; kiln prints them to stderr. When
	// the load fails, the warnings are part of the returned Diagnostics
	// instead.
	Warn func(*Diagnostic)
}

// Limits bound the work and size of an elaboration so that hostile or
// mistaken sources fail with a diagnostic instead of exhausting memory.
type Limits struct {
	MaxRepeat int // largest repeat count (default 10000)
	MaxSize   int // largest channel count, window size or input dimension (default 1<<24)
	MaxNodes  int // largest graph (default 1<<20 nodes)
	MaxSteps  int // most expression evaluations (default 1<<26)
	// MaxFileBytes bounds each imported (and the top-level) source file
	// (default 4 MiB); MaxTotalBytes bounds all imported sources together
	// (default 16 MiB).
	MaxFileBytes  int64
	MaxTotalBytes int64
	// MaxTensorBytes bounds any one tensor of the network (default 1 GiB)
	// and MaxParamBytes all its parameters together (default 4 GiB), so a
	// four-line source cannot make a build allocate tens of gigabytes.
	MaxTensorBytes int64
	MaxParamBytes  int64
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
	if l.MaxTensorBytes <= 0 {
		l.MaxTensorBytes = 1 << 30
	}
	if l.MaxParamBytes <= 0 {
		l.MaxParamBytes = 4 << 30
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = 4 << 20
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = 16 << 20
	}
	return l
}

// LoadFile reads the network source at path (from opts.FS if set, else from
// disk), with its imports, and elaborates it into a graph. All syntax and
// elaboration errors are returned together as Diagnostics.
func LoadFile(path string, opts Options) (*ir.Graph, error) {
	src, err := readFile(opts.FS, path, opts.Limits.withDefaults().MaxFileBytes)
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
	ld := &loader{opts: opts, dl: dl, units: map[string]*unit{}, loading: map[string]bool{},
		limits: opts.Limits.withDefaults()}
	if opts.FS == nil {
		ld.addRoot(filepath.Dir(f.Name))
	}
	for _, d := range opts.ImportPath {
		ld.addRoot(d)
	}
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
	if opts.Warn != nil {
		for _, d := range dl.warnings() {
			opts.Warn(d)
		}
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
	// suggestions counts the "did you mean" suggestions computed for the
	// file (see maxSuggestions).
	suggestions int
	// undefined caches the message for each undefined name (undefinedMsg).
	undefined map[string]string
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
	limits  Limits
	// roots are the directories (absolute, symlinks resolved) that disk
	// imports must resolve inside: the top-level file's directory and
	// opts.ImportPath.
	roots []string
	read  int64 // bytes of imported sources read so far
}

// addRoot adds dir (made absolute, symlinks resolved) to the import roots;
// a directory that does not exist is added as written (nothing resolves
// inside it, so its imports are simply not found there).
func (ld *loader) addRoot(dir string) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	ld.roots = append(ld.roots, abs)
}

// within reports whether the absolute, clean path p is inside one of the
// roots (or is one).
func (ld *loader) within(p string) bool {
	for _, r := range ld.roots {
		if rel, err := filepath.Rel(r, p); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel) {
			return true
		}
	}
	return false
}

func unitKey(fsys fs.FS, name string) string {
	if fsys == nil {
		if abs, err := filepath.Abs(name); err == nil {
			name = abs
		}
		if real, err := filepath.EvalSymlinks(name); err == nil {
			name = real
		}
		return "disk:" + name
	}
	return fmt.Sprintf("fs%p:%s", fsys, name)
}

// errTooLarge is returned by readFile for a file over its size limit.
var errTooLarge = errors.New("file too large")

// readFile reads name (from fsys, or from disk when fsys is nil), refusing
// more than limit bytes.
func readFile(fsys fs.FS, name string, limit int64) ([]byte, error) {
	var r io.Reader
	if fsys == nil {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	} else {
		f, err := fsys.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return readLimited(r, name, limit)
}

func readLimited(r io.Reader, name string, limit int64) ([]byte, error) {
	src, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(src)) > limit {
		return nil, fmt.Errorf("%s: %w (over %d bytes)", name, errTooLarge, limit)
	}
	return src, nil
}

// readImport reads an imported source safely: only a regular file (checked
// with Stat before opening, so a FIFO or device is never opened for reading,
// and again on the open file, which is opened with O_NONBLOCK so that a file
// swapped for a FIFO in between cannot block), at most limit bytes. On disk,
// name is the symlink-resolved path already checked against the roots.
func readImport(fsys fs.FS, name string, limit int64) ([]byte, error) {
	var fi fs.FileInfo
	var err error
	if fsys == nil {
		fi, err = os.Stat(name)
	} else {
		fi, err = fs.Stat(fsys, name)
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", name, fileKind(fi.Mode()))
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %w (%d bytes, limit %d)", name, errTooLarge, fi.Size(), limit)
	}
	if fsys != nil {
		return readFile(fsys, name, limit)
	}
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", name, fileKind(fi.Mode()))
	}
	return readLimited(f, name, limit)
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "mode " + m.String()
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

// load finds, reads and parses the file imported by imp from u.
//
// Resolution, in order: beside the importing file (on disk or in its
// fs.FS), then in each opts.ImportPath directory (disk), then in the
// library opts.Lib; a name without an extension gets ".kiln". The sandbox:
//   - the path must be relative and name a ".kiln" file;
//   - on disk the candidate, lexically and again after resolving symlinks
//     (filepath.EvalSymlinks), must lie inside a root: the top-level file's
//     directory or an ImportPath directory (so "../" out of the tree, a
//     symlink pointing out of it and /proc are refused); in an fs.FS,
//     fs.ValidPath already forbids "..";
//   - only regular files are read (no FIFO, device, directory), each at most
//     Limits.MaxFileBytes and all together Limits.MaxTotalBytes.
//
// A refused import is an error at the import's position; the refused file
// is never parsed, so its contents never appear in a diagnostic.
func (ld *loader) load(from *unit, imp *Import) *unit {
	fail := func(format string, args ...any) *unit {
		ld.dl.errorf(imp.Pos, "cannot import %q: %s", imp.Path, fmt.Sprintf(format, args...))
		return nil
	}
	p := imp.Path
	if p == "" {
		return fail("empty path")
	}
	if path.IsAbs(p) || filepath.IsAbs(p) || filepath.VolumeName(p) != "" {
		return fail("import paths must be relative (to the importing file, an --import-path directory or the built-in library)")
	}
	switch path.Ext(p) {
	case ".kiln":
	case "":
		p += ".kiln"
	default:
		return fail("only .kiln files can be imported")
	}
	type cand struct {
		fsys fs.FS
		name string
	}
	var cands []cand
	if from.fsys == nil {
		cands = append(cands, cand{nil, filepath.Join(filepath.Dir(from.file.Name), filepath.FromSlash(p))})
	} else {
		cands = append(cands, cand{from.fsys, path.Join(path.Dir(from.file.Name), p)})
	}
	for _, d := range ld.opts.ImportPath {
		cands = append(cands, cand{nil, filepath.Join(d, filepath.FromSlash(p))})
	}
	if ld.opts.Lib != nil {
		cands = append(cands, cand{ld.opts.Lib, path.Clean(p)})
	}
	for _, c := range cands {
		name := c.name
		if c.fsys != nil {
			if !fs.ValidPath(name) {
				continue
			}
		} else {
			abs, err := filepath.Abs(name)
			if err != nil {
				return fail("%v", err)
			}
			if !ld.within(abs) {
				return fail("%s is outside the importing file's directory tree and the --import-path directories", name)
			}
			real, err := filepath.EvalSymlinks(abs)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fail("%v", err)
			}
			if !ld.within(real) {
				return fail("%s resolves to %s, outside the importing file's directory tree and the --import-path directories", name, real)
			}
			if filepath.Ext(real) != ".kiln" {
				return fail("%s resolves to %s, not a .kiln file", name, real)
			}
			name = real
		}
		key := unitKey(c.fsys, name)
		if ld.loading[key] {
			ld.dl.errorf(imp.Pos, "import cycle: %s imports %s, which is being loaded", from.file.Name, c.name)
			return nil
		}
		if u := ld.units[key]; u != nil {
			return u
		}
		limit := min(ld.limits.MaxFileBytes, ld.limits.MaxTotalBytes-ld.read)
		src, err := readImport(c.fsys, name, limit)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if errors.Is(err, errTooLarge) && limit < ld.limits.MaxFileBytes {
				return fail("the imported sources exceed %d bytes in all", ld.limits.MaxTotalBytes)
			}
			return fail("%v", err)
		}
		ld.read += int64(len(src))
		f := parseFile(c.name, src, ld.dl)
		u := &unit{file: f, fsys: c.fsys, key: key}
		ld.units[key] = u
		ld.loading[key] = true
		ld.resolveImports(u)
		delete(ld.loading, key)
		return u
	}
	return fail("file not found")
}
