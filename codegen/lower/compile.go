package lower

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/kiln-dev/kiln/codegen"
)

// Compile compiles the program's modules (in parallel, through the object
// cache) and its driver, and links them into the shared library out.
// progress, if not nil, reports each finished module.
func (p *Program) Compile(ctx context.Context, tc *codegen.Toolchain, out string, progress func(done, total int, cached bool)) error {
	t := p.Targets[0]
	var jobs []codegen.CompileJob
	for i, m := range p.Modules {
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
	drv, err := compileC(tc, p.Driver, t)
	if err != nil {
		return err
	}
	return tc.SharedLibrary(append(objs, drv), t, out)
}

// compileC compiles C source for t through the object cache.
func compileC(tc *codegen.Toolchain, src string, t codegen.Target) (string, error) {
	h := sha256.Sum256([]byte(tc.Version + "\x00" + t.Triple + "\x00driver-O2\x00" + src))
	key := hex.EncodeToString(h[:])
	obj := filepath.Join(tc.CacheDir, key[:2], key+".o")
	if _, err := os.Stat(obj); err == nil {
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
	cmd := exec.Command(tc.Clang, "-c", "-O2", "-fPIC", "--target="+t.Triple, "-o", tmp, c)
	if outp, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("compiling the kernel driver: %v\n%s", err, outp)
	}
	if err := os.Rename(tmp, obj); err != nil {
		return "", err
	}
	return obj, nil
}
