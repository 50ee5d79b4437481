package lower

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// TestCompileCacheDamaged reproduces issue 11's build-cache faults on tiny
// in a fresh cache: a truncated cached library (the binary died with
// SIGBUS), a kernel list "[]" with a matching checksum (the binary failed or
// panicked), empty objects (the driver's included) and garbage entries.
// Each time Compile warns naming the entry, rebuilds it, and produces the
// same library as the first build, which runs.
func TestCompileCacheDamaged(t *testing.T) {
	tc0, err := codegen.FindLLVM()
	testenv.Check(t, err)
	g, err := dsl.LoadFile("tiny.kiln", dsl.Options{Batch: 1, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	s, err := passes.Run(g, passes.Options{Target: passes.Targets[0]})
	if err != nil {
		t.Fatal(err)
	}
	tc := *tc0
	tc.CacheDir = t.TempDir()
	var warn bytes.Buffer
	tc.Warn = &warn
	compile := func() (*Program, []byte) {
		t.Helper()
		p, err := Lower(s, params, []codegen.Target{codegen.AVX512, codegen.AVX2})
		if err != nil {
			t.Fatal(err)
		}
		so := filepath.Join(t.TempDir(), "net.so")
		if err := p.Compile(context.Background(), &tc, so, nil); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(so)
		if err != nil {
			t.Fatal(err)
		}
		return p, b
	}
	p0, want := compile()
	glob := func(pat string) []string {
		m, _ := filepath.Glob(filepath.Join(tc.CacheDir, pat))
		return m
	}
	libs, lists, objs := glob("lib/*/*.so"), glob("lib/*/*.json"), glob("*/*.o")
	if len(libs) != 1 || len(lists) != 1 || len(objs) < 2 {
		t.Fatalf("cache holds %v %v %v", libs, lists, objs)
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name    string
		damage  func()
		entries []string // named by the warnings
	}{
		{"library truncated", func() { os.Truncate(libs[0], 4096) }, libs},
		{"kernel list []", func() {
			if err := tc.StoreCached(lists[0], []byte("[]")); err != nil {
				t.Fatal(err)
			}
		}, lists},
		{"library garbage", func() { write(libs[0], []byte("garbage")) }, libs},
		{"objects empty, the driver's included", func() {
			os.Remove(lists[0])
			for _, o := range objs {
				write(o, nil)
			}
		}, objs},
		{"objects bit-flipped", func() {
			os.Remove(lists[0])
			for _, o := range objs {
				b, _ := os.ReadFile(o)
				b[len(b)/2] ^= 0x21
				write(o, b)
			}
		}, objs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			warn.Reset()
			c.damage()
			p, got := compile()
			if !bytes.Equal(got, want) {
				t.Error("rebuilt library differs from the first build")
			}
			if !slices.Equal(kernelNames(p.Manifest.Kernels), kernelNames(p0.Manifest.Kernels)) {
				t.Errorf("kernel list %v", kernelNames(p.Manifest.Kernels))
			}
			for _, e := range c.entries {
				if !strings.Contains(warn.String(), "kiln: warning: damaged build cache entry "+e+" (") {
					t.Errorf("no warning naming %s in %q", e, warn.String())
				}
			}
			m, err := rt.Open(rt.Artifact{Manifest: p.Manifest, SharedObject: got, Weights: p.Weights}, rt.Options{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			m.Close()
			// The rebuilt entries are good: the next build is silent.
			warn.Reset()
			compile()
			if warn.Len() != 0 {
				t.Errorf("after the rebuild: %q", warn.String())
			}
		})
	}
}

func kernelNames(ks []rt.KernelInfo) []string {
	var n []string
	for _, k := range ks {
		n = append(n, k.Name)
	}
	return n
}
