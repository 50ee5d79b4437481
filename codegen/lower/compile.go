package lower

import (
	"context"
	"encoding/json"
	"io"
	"sync"

	"crypto/sha256"
	"encoding/hex"
	"fmt"
	rt "github.com/kiln-dev/kiln/runtime"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
)

// Compile produces the shared library out. A whole-library cache comes
// first: the key hashes the kiln executable itself (so any change to the code
// generators invalidates it), the targets and every kernel spec; on a hit the
// cached library and kernel list are reused and no LLVM IR is generated. On a
// miss the kernels are emitted into LLVM modules that compile in parallel
// through the per-object cache, the driver is generated and compiled, and
// everything is linked. Compile sets p.Manifest.Kernels. progress, if not
// nil, reports each finished module.
func (p *Program) Compile(ctx context.Context, tc *codegen.Toolchain, out string, progress func(done, total int, cached bool)) error {
	t := p.Targets[0]
	key, err := p.cacheKey(tc)
	if err != nil {
		return err
	}
	dir := filepath.Join(tc.CacheDir, "lib", key[:2])
	cachedSO, cachedInfo := filepath.Join(dir, key+".so"), filepath.Join(dir, key+".json")
	// Both entries are verified (codegen.Toolchain.LookupCached): the
	// library by digest and ELF header, the kernel list by digest and
	// against the kernel specs it must describe.
	var kernels []rt.KernelInfo
	if _, ok := tc.LookupCached(cachedInfo, func(b []byte) error { return p.checkKernelList(b, &kernels) }); ok {
		if so, ok := tc.LookupCached(cachedSO, codegen.CheckELF); ok && writeAtomic(out, so) == nil {
			p.Manifest.Kernels = kernels
			if progress != nil {
				progress(1, 1, true)
			}
			return nil
		}
	}
	mods, infos, err := p.generate()
	if err != nil {
		return err
	}
	var jobs []codegen.CompileJob
	for i, m := range mods {
		jobs = append(jobs, codegen.CompileJob{Name: fmt.Sprintf("kernels%d", i), IR: m.String(), Target: t})
	}
	var cb func(done, total int, job codegen.CompileJob, cached bool)
	if progress != nil {
		cb = func(done, total int, _ codegen.CompileJob, cached bool) { progress(done, total, cached) }
	}
	objs, err := tc.CompileAll(ctx, jobs, cb)
	if err != nil {
		return err
	}
	drv, err := compileC(ctx, tc, driverSourceOpts(p.Targets, infos, p.Manifest.ArenaBytes, p.Manifest.WeightsBytes, p.progress), t)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := tc.SharedLibrary(append(objs, drv), t, out); err != nil {
		return err
	}
	p.Manifest.Kernels = infos
	// Fill the library cache (best effort; a failure only costs the next
	// build time). The library goes first: its index makes it visible.
	if info, err := json.Marshal(infos); err == nil {
		if so, err := os.ReadFile(out); err == nil && tc.StoreCached(cachedSO, so) == nil {
			tc.StoreCached(cachedInfo, info)
		}
	}
	return nil
}

// checkKernelList decodes a cached kernel list into kernels and checks that
// it lists p's kernels: one per spec, by name, in order.
func (p *Program) checkKernelList(b []byte, kernels *[]rt.KernelInfo) error {
	var ks []rt.KernelInfo
	if err := json.Unmarshal(b, &ks); err != nil {
		return fmt.Errorf("kernel list: %v", err)
	}
	if len(ks) != len(p.specs) {
		return fmt.Errorf("kernel list has %d kernels, the network has %d", len(ks), len(p.specs))
	}
	for i, k := range ks {
		if k.Name != p.specs[i].name {
			return fmt.Errorf("kernel list entry %d is %q, want %q", i, k.Name, p.specs[i].name)
		}
	}
	*kernels = ks
	return nil
}

var exeHash struct {
	once sync.Once
	sum  string
	err  error
}

// cacheKey hashes the running executable, the targets and the specs.
func (p *Program) cacheKey(tc *codegen.Toolchain) (string, error) {
	exeHash.once.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			exeHash.err = err
			return
		}
		f, err := os.Open(exe)
		if err != nil {
			exeHash.err = err
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			exeHash.err = err
			return
		}
		exeHash.sum = hex.EncodeToString(h.Sum(nil))
	})
	if exeHash.err != nil {
		return "", fmt.Errorf("hashing the kiln executable for the build cache: %w", exeHash.err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "kiln-lib-v2\x00%s\x00%s\x00", exeHash.sum, tc.Version)
	// The driver embeds the sizes the runtime checks at load.
	fmt.Fprintf(h, "arena %d weights %d\x00", p.Manifest.ArenaBytes, p.Manifest.WeightsBytes)
	for _, t := range p.Targets {
		fmt.Fprintf(h, "%+v\x00", t)
	}
	if p.progress {
		fmt.Fprintf(h, "progress\x00") // a different driver (progress.go)
	}
	for _, k := range p.specs {
		fmt.Fprintf(h, "%s %d %T%+v\x00", k.name, k.macs, k.spec, k.spec)
		fmt.Fprintf(h, "%s\x00", p.graph.Nodes[k.node].Name)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kiln-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// compileC compiles C source for t through the object cache (verified on
// reuse: codegen.Toolchain.LookupCached).
func compileC(ctx context.Context, tc *codegen.Toolchain, src string, t codegen.Target) (string, error) {
	cross, err := codegen.CrossCFlags(t) // sysroot and inline atomics when cross-compiling
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(tc.Version + "\x00" + t.Triple + "\x00driver-O2-v2" + strings.Join(cross, " ") + "\x00" + src))
	key := hex.EncodeToString(h[:])
	obj := filepath.Join(tc.CacheDir, key[:2], key+".o")
	if _, ok := tc.LookupCached(obj, codegen.CheckELF); ok {
		return obj, nil
	}
	if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(filepath.Dir(obj), "driver")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	c := filepath.Join(dir, "driver.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, "driver.o")
	cmd := exec.CommandContext(ctx, tc.Clang, append([]string{"-c", "-O2", "-fPIC", "--target=" + t.Triple}, append(cross, "-o", tmp, c)...)...)
	if outp, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("compiling the kernel driver: %v\n%s", err, outp)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		return "", err
	}
	if err := codegen.CheckELF(b); err != nil {
		return "", fmt.Errorf("compiling the kernel driver: %s: %v", tmp, err)
	}
	if err := tc.StoreCached(obj, b); err != nil {
		return "", err
	}
	return obj, nil
}
