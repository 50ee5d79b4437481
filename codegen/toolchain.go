package codegen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// LLVMMajor is the LLVM major version Kiln generates IR for.
const LLVMMajor = 19

// Toolchain is a located LLVM installation: clang (compiles .ll to objects
// and links shared libraries) and llc.
type Toolchain struct {
	Clang   string // path of clang-19
	LLC     string // path of llc-19 ("" if absent; clang suffices)
	Version string // first line of clang --version
	// CacheDir holds compiled objects by content hash: $KILN_CACHE_DIR, else
	// os.UserCacheDir()/kiln/obj. Entries are verified on reuse (cache.go).
	CacheDir string
	// Warn receives one line per damaged cache entry found (and rebuilt);
	// nil means os.Stderr.
	Warn io.Writer
}

// FindLLVM locates clang-19 (and llc-19) on PATH or in /usr/lib/llvm-19/bin,
// accepting an unsuffixed clang/llc whose --version reports major 19.
func FindLLVM() (*Toolchain, error) {
	clang, cver, err := findTool("clang")
	if err != nil {
		return nil, err
	}
	llc, _, _ := findTool("llc")
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	return &Toolchain{Clang: clang, LLC: llc, Version: cver, CacheDir: dir}, nil
}

// llvmBinDirs are searched after PATH (Debian's llvm-19 packages).
var llvmBinDirs = []string{fmt.Sprintf("/usr/lib/llvm-%d/bin", LLVMMajor)}

func findTool(name string) (path, version string, err error) {
	suffixed := fmt.Sprintf("%s-%d", name, LLVMMajor)
	cands := []string{suffixed}
	for _, d := range llvmBinDirs {
		cands = append(cands, filepath.Join(d, name))
	}
	cands = append(cands, name)
	for _, c := range cands {
		p, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		out, err := exec.Command(p, "--version").CombinedOutput()
		if err != nil {
			continue
		}
		if v, ok := versionLine(string(out)); ok {
			return p, v, nil
		}
	}
	return "", "", fmt.Errorf("%s not found: install it with `apt-get install llvm-%d clang-%d`", suffixed, LLVMMajor, LLVMMajor)
}

// versionLine returns the line of --version output naming the version, if
// its major is LLVMMajor.
func versionLine(out string) (string, bool) {
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, "version ")
		if i < 0 {
			continue
		}
		v := line[i+len("version "):]
		if strings.HasPrefix(v, fmt.Sprintf("%d.", LLVMMajor)) {
			return strings.TrimSpace(line), true
		}
		return "", false
	}
	return "", false
}

func cacheDir() (string, error) {
	if d := os.Getenv("KILN_CACHE_DIR"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set KILN_CACHE_DIR): %w", err)
	}
	return filepath.Join(d, "kiln", "obj"), nil
}

// clangTarget is the --target argument for t.
func clangTarget(t Target) string { return t.Triple }

// compileArgs are the clang arguments compiling in.ll to out.o for t. The
// target CPU and features come from the functions' attributes; -march is not
// passed so that one module may carry several feature sets.
func compileArgs(t Target, in, out string) []string {
	return []string{"-c", "-O3", "-fPIC", "--target=" + clangTarget(t), "-Wno-override-module", "-o", out, in}
}

// CacheKey is the content hash under which the object of ll for t is cached:
// sha256 of the IR text (which carries each function's target-cpu,
// tune-cpu and target-features attributes), the target's full description
// (Target.cacheKey: triple, CPU, tune CPU, features, widths, block), the
// compiler version and the compile arguments.
func (tc *Toolchain) CacheKey(ll string, t Target) string {
	h := sha256.New()
	fmt.Fprintf(h, "kiln-obj-v3\x00%s\x00%s\x00%s\x00", tc.Version, t.cacheKey(), strings.Join(compileArgs(t, "in.ll", "out.o"), " "))
	h.Write([]byte(ll))
	return hex.EncodeToString(h.Sum(nil))
}

// CompileObject compiles textual IR ll for target t into an object file and
// returns its path in the cache. A cached object with the same key is
// reused once verified (LookupCached: its SHA-256 and ELF header; a damaged
// one is rebuilt with a warning); a new one is stored with StoreCached, by
// rename, so concurrent compilers never see a partial object.
func (tc *Toolchain) CompileObject(ll string, t Target) (string, error) {
	obj, _, err := tc.compileObject(context.Background(), ll, t)
	return obj, err
}

// compileObject is CompileObject that also reports a cache hit.
// Cancelling ctx kills the compiler.
func (tc *Toolchain) compileObject(ctx context.Context, ll string, t Target) (obj string, cached bool, err error) {
	key := tc.CacheKey(ll, t)
	obj = filepath.Join(tc.CacheDir, key[:2], key+".o")
	if _, ok := tc.LookupCached(obj, CheckELF); ok {
		return obj, true, nil
	}
	if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
		return "", false, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(obj), "tmp-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	in, out := filepath.Join(tmp, "in.ll"), filepath.Join(tmp, "out.o")
	if err := os.WriteFile(in, []byte(ll), 0o644); err != nil {
		return "", false, err
	}
	if err := tc.runCtx(ctx, tc.Clang, compileArgs(t, in, out)...); err != nil {
		if ctx.Err() != nil {
			return "", false, ctx.Err()
		}
		return "", false, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", false, err
	}
	if err := CheckELF(b); err != nil {
		return "", false, fmt.Errorf("%s produced %s: %v", filepath.Base(tc.Clang), out, err)
	}
	if err := tc.StoreCached(obj, b); err != nil {
		return "", false, err
	}
	return obj, false, nil
}

// Assembly compiles ll for t to assembly text (AT&T syntax on x86), for
// inspection and FileCheck-style tests; it is not cached.
func (tc *Toolchain) Assembly(ll string, t Target) (string, error) {
	tmp, err := os.MkdirTemp("", "kiln-asm-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	in, out := filepath.Join(tmp, "in.ll"), filepath.Join(tmp, "out.s")
	if err := os.WriteFile(in, []byte(ll), 0o644); err != nil {
		return "", err
	}
	if err := tc.run(tc.Clang, "-S", "-O3", "--target="+clangTarget(t), "-Wno-override-module", "-o", out, in); err != nil {
		return "", err
	}
	b, err := os.ReadFile(out)
	return string(b), err
}

// SharedLibrary links objects into the shared library out for t with clang
// -shared. Linking for another architecture (arm64 on an x86 host) uses lld
// (-fuse-ld=lld) without the C library or a sysroot (-nostdlib); when ld.lld
// is missing it returns an error saying so. The library then has no
// DT_NEEDED entries: the few libc functions the C driver calls
// (clock_gettime, sched_yield) stay undefined and are bound at dlopen time
// to the loading process's libc (kiln links it), and the driver is compiled
// with CrossCFlags so that nothing needs libgcc (docs/ARM64.md).
func (tc *Toolchain) SharedLibrary(objs []string, t Target, out string) error {
	tmp := out + ".tmp"
	args := []string{"-shared", "-fPIC", "--target=" + clangTarget(t), "-o", tmp}
	if t.Arch() != hostArch() {
		if !haveLLD() {
			return fmt.Errorf("linking a %s library on %s needs ld.lld (apt-get install lld-%d)", t.Arch(), hostArch(), LLVMMajor)
		}
		// Kernels call nothing and the driver only libc, resolved at load
		// time, so no libc, libgcc or sysroot is linked.
		args = append(args, "-fuse-ld=lld", "-nostdlib")
	}
	if err := tc.run(tc.Clang, append(args, objs...)...); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// debianArch is Debian's name of each architecture Kiln targets, which
// names its cross C library package (libc6-dev-<arch>-cross).
var debianArch = map[string]string{"x86_64": "amd64", "aarch64": "arm64"}

// CrossCFlags are the extra clang arguments for compiling C (the kernel
// driver) for t on this host: none for the host's own architecture. For
// another architecture the headers come from Debian's cross C library in
// /usr/<arch>-linux-gnu (libc6-dev-arm64-cross for aarch64), never from the
// host's /usr/include, and on aarch64 atomics are inlined
// (-mno-outline-atomics): outlined ones call libgcc helpers such as
// __aarch64_ldadd4_acq_rel, which SharedLibrary's -nostdlib link leaves
// undefined and no libc defines, so the library would fail to load. A
// missing sysroot is an error naming the package to install.
func CrossCFlags(t Target) ([]string, error) {
	arch := t.Arch()
	if arch == hostArch() {
		return nil, nil
	}
	sysroot := "/usr/" + arch + "-linux-gnu"
	if _, err := os.Stat(filepath.Join(sysroot, "include", "time.h")); err != nil {
		pkg := "libc6-dev-" + debianArch[arch] + "-cross"
		if debianArch[arch] == "" {
			pkg = "the " + arch + " C library headers"
		}
		return nil, fmt.Errorf("compiling C for %s on %s needs the %s C library headers in %s (apt-get install %s)", arch, hostArch(), arch, sysroot, pkg)
	}
	flags := []string{"--sysroot=" + sysroot}
	if arch == "aarch64" {
		flags = append(flags, "-mno-outline-atomics")
	}
	return flags, nil
}

func haveLLD() bool {
	for _, c := range []string{fmt.Sprintf("ld.lld-%d", LLVMMajor), fmt.Sprintf("/usr/lib/llvm-%d/bin/ld.lld", LLVMMajor), "ld.lld"} {
		if _, err := exec.LookPath(c); err == nil {
			return true
		}
	}
	return false
}

func hostArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

func (tc *Toolchain) run(tool string, args ...string) error {
	return tc.runCtx(context.Background(), tool, args...)
}

// runCtx runs tool; cancelling ctx kills it.
func (tc *Toolchain) runCtx(ctx context.Context, tool string, args ...string) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4000 {
			msg = msg[:4000] + "\n..."
		}
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(tool), strings.Join(args, " "), err, msg)
	}
	return nil
}

// CompileJob is one module to compile for one target.
type CompileJob struct {
	Name   string // for progress reports
	IR     string // textual LLVM IR
	Target Target
}

// CompileAll compiles jobs in parallel, at most GOMAXPROCS at a time, and
// returns the object paths in job order. Cancelling ctx kills the running
// compilers and returns ctx's error. progress, if not nil, is called
// after each job (serially) with the number of finished jobs, the total, the
// job and whether its object came from the cache. The first error cancels
// the jobs not yet started; all errors are joined.
func (tc *Toolchain) CompileAll(ctx context.Context, jobs []CompileJob, progress func(done, total int, job CompileJob, cached bool)) ([]string, error) {
	objs := make([]string, len(jobs))
	errs := make([]error, len(jobs))
	sem := make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
	var mu sync.Mutex
	var wg sync.WaitGroup
	done := 0
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, j := range jobs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := ctx.Err(); err != nil {
				errs[i] = err
				return
			}
			obj, cached, err := tc.compileObject(ctx, j.IR, j.Target)
			if err != nil {
				errs[i] = fmt.Errorf("compiling %s for %s: %w", j.Name, j.Target.Name, err)
				cancel()
				return
			}
			objs[i] = obj
			mu.Lock()
			done++
			if progress != nil {
				progress(done, len(jobs), j, cached)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Report real failures, not the cancellations they caused.
	var real []error
	for _, e := range errs {
		if e != nil && !errors.Is(e, context.Canceled) && !errors.Is(e, context.DeadlineExceeded) {
			real = append(real, e)
		}
	}
	if err := errors.Join(real...); err != nil {
		return nil, err
	}
	if err := parent.Err(); err != nil {
		return nil, err
	}
	return objs, nil
}
