package codegen

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cacheDamage lists the ways issue 11 found cache entries damaged (and a
// few more); each must be detected on reuse, removed and reported.
var cacheDamage = []struct {
	name   string
	damage func(path string) error
	reason string
}{
	{"truncated", func(p string) error { return os.Truncate(p, 100) }, "does not match the recorded one"},
	{"two bits flipped", func(p string) error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b[len(b)/2] ^= 0x01
		b[len(b)/3] ^= 0x80
		return os.WriteFile(p, b, 0o644)
	}, "does not match the recorded one"},
	{"empty", func(p string) error { return os.WriteFile(p, nil, 0o644) }, "empty"},
	{"garbage", func(p string) error { return os.WriteFile(p, []byte("garbage\n"), 0o644) }, "does not match the recorded one"},
	{"garbage with matching checksum", func(p string) error {
		// A plausible-looking entry whose sidecar was rewritten to match:
		// the structural check still refuses it.
		b := []byte("not an object file")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		return (&Toolchain{}).StoreCached(p, b)
	}, "not an ELF file"},
	{"checksum missing", func(p string) error { return os.Remove(p + sumSuffix) }, "no checksum"},
	{"checksum garbage", func(p string) error { return os.WriteFile(p+sumSuffix, []byte("zz\n"), 0o644) }, "does not match the recorded one"},
	{"entry missing", func(p string) error { return os.Remove(p) }, "no such file"},
}

// TestCacheEntryVerified damages a stored entry in each way: LookupCached
// misses, warns in one line naming the entry, and removes it; an intact
// entry is returned unchanged and silently.
func TestCacheEntryVerified(t *testing.T) {
	content := append(bytes.Clone(ELFMagic), bytes.Repeat([]byte("object"), 500)...)
	for _, c := range cacheDamage {
		t.Run(c.name, func(t *testing.T) {
			var warn bytes.Buffer
			tc := &Toolchain{CacheDir: t.TempDir(), Warn: &warn}
			p := filepath.Join(tc.CacheDir, "ab", "abcd.o")
			if err := tc.StoreCached(p, content); err != nil {
				t.Fatal(err)
			}
			if b, ok := tc.LookupCached(p, CheckELF); !ok || !bytes.Equal(b, content) || warn.Len() != 0 {
				t.Fatalf("intact entry: ok=%v, warning %q", ok, warn.String())
			}
			if err := c.damage(p); err != nil {
				t.Fatal(err)
			}
			if _, ok := tc.LookupCached(p, CheckELF); ok {
				t.Fatal("damaged entry reused")
			}
			msg := warn.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "kiln: warning: damaged build cache entry "+p) ||
				!strings.Contains(msg, c.reason) || !strings.HasSuffix(msg, "rebuilding it\n") {
				t.Fatalf("warning %q, want one line naming %s and %q", msg, p, c.reason)
			}
			for _, f := range []string{p, p + sumSuffix} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s not removed", f)
				}
			}
			// Missing altogether: a silent miss.
			warn.Reset()
			if _, ok := tc.LookupCached(p, CheckELF); ok || warn.Len() != 0 {
				t.Fatalf("absent entry: ok=%v, warning %q", ok, warn.String())
			}
		})
	}
}

// TestCompileObjectRebuildsDamaged: a damaged cached object is rebuilt with
// a warning, and the rebuilt object is the original one.
func TestCompileObjectRebuildsDamaged(t *testing.T) {
	tc := toolchain(t)
	m := NewModule(AVX2)
	if _, _, err := m.Copy("copy", CopySpec{Elems: 64, OutOff: 64}); err != nil {
		t.Fatal(err)
	}
	ll := m.String()
	c := *tc
	c.CacheDir = t.TempDir()
	var warn bytes.Buffer
	c.Warn = &warn
	obj, cached, err := c.compileObject(context.Background(), ll, AVX2)
	if err != nil || cached {
		t.Fatalf("first compile: cached=%v, %v", cached, err)
	}
	want, _ := os.ReadFile(obj)
	for _, d := range cacheDamage {
		t.Run(d.name, func(t *testing.T) {
			warn.Reset()
			if err := d.damage(obj); err != nil {
				t.Fatal(err)
			}
			o, cached, err := c.compileObject(context.Background(), ll, AVX2)
			if err != nil || cached || o != obj {
				t.Fatalf("recompile: %s, cached=%v, %v", o, cached, err)
			}
			if !strings.Contains(warn.String(), "damaged build cache entry "+obj) {
				t.Errorf("warning %q", warn.String())
			}
			if got, _ := os.ReadFile(obj); !bytes.Equal(got, want) {
				t.Error("rebuilt object differs")
			}
			if _, cached, err := c.compileObject(context.Background(), ll, AVX2); err != nil || !cached {
				t.Errorf("third compile: cached=%v, %v", cached, err)
			}
		})
	}
}
