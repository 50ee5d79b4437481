package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteExecutableAtomicInterrupted: a write cancelled midway (as by
// SIGINT) leaves neither the output nor its .OUT.tmp-* file, and an
// existing output is kept as it was; the temporary file is registered for
// the signal handler while it exists.
func TestWriteExecutableAtomicInterrupted(t *testing.T) {
	for _, existing := range []bool{false, true} {
		dir := t.TempDir()
		out := filepath.Join(dir, "net")
		if existing {
			os.WriteFile(out, []byte("old"), 0o755)
		}
		ctx, cancel := context.WithCancel(context.Background())
		err := writeExecutableAtomic(ctx, out, func(w io.Writer) error {
			if _, err := w.Write([]byte("part")); err != nil {
				return err
			}
			tempFiles.Lock()
			n := len(tempFiles.paths)
			tempFiles.Unlock()
			if n != 1 {
				t.Errorf("%d temporary files registered, want 1", n)
			}
			cancel()
			_, err := w.Write([]byte("more"))
			return err
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		want := ""
		if existing {
			want = "net"
		}
		if strings.Join(names, " ") != want {
			t.Errorf("existing=%v: directory holds %v, want %q", existing, names, want)
		}
		if b, _ := os.ReadFile(out); existing && string(b) != "old" {
			t.Errorf("existing output changed to %q", b)
		}
		if len(tempFiles.paths) != 0 {
			t.Errorf("temporary files still registered: %v", tempFiles.paths)
		}
	}
	// Uninterrupted: complete and executable.
	out := filepath.Join(t.TempDir(), "net")
	if err := writeExecutableAtomic(context.Background(), out, func(w io.Writer) error { _, err := w.Write([]byte("x")); return err }); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("%v %v", st, err)
	}
}

// TestRemoveTemps is what the signal handler does when the build does not
// unwind in time: every registered file and directory goes.
func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	d, f := filepath.Join(dir, "kiln-build-1"), filepath.Join(dir, ".net.tmp-1")
	os.MkdirAll(filepath.Join(d, "sub"), 0o755)
	os.WriteFile(filepath.Join(d, "sub", "x.so"), nil, 0o644)
	os.WriteFile(f, nil, 0o644)
	addTemp(d)
	addTemp(f)
	removeTemps()
	tempFiles.Unlock() // removeTemps keeps the lock: the process exits next
	if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) != 0 {
		t.Fatalf("left: %v", m)
	}
	m, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(m) != 0 {
		t.Fatalf("left: %v", m)
	}
}

// TestCheckOutputPath: -o may not name the kiln executable (here the test
// binary), the runner or an input, through a symlink or a hard link
// either; a new path or another file is fine.
func TestCheckOutputPath(t *testing.T) {
	dir := t.TempDir()
	self, _ := os.Executable()
	runner := filepath.Join(dir, "kiln-runner")
	src := filepath.Join(dir, "net.kiln")
	weights := filepath.Join(dir, "w.safetensors")
	for _, p := range []string{runner, src, weights} {
		os.WriteFile(p, []byte(p), 0o644)
	}
	selfLink, hard := filepath.Join(dir, "self"), filepath.Join(dir, "hard.kiln")
	os.Symlink(self, selfLink)
	os.Link(src, hard)
	other := filepath.Join(dir, "other")
	os.WriteFile(other, nil, 0o644)
	for _, c := range []struct {
		out, want string
	}{
		{self, "is the running kiln executable"},
		{selfLink, "is the running kiln executable"},
		{runner, "is the kiln runner"},
		{src, "is the input file " + src},
		{hard, "is the input file " + src},
		{weights, "is the input file " + weights},
		{other, ""},
		{filepath.Join(dir, "new"), ""},
	} {
		err := checkOutputPath(c.out, runner, src, weights, "tiny")
		if c.want == "" {
			if err != nil {
				t.Errorf("-o %s: %v", c.out, err)
			}
			continue
		}
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("-o %s: %v, want a usage error containing %q", c.out, err, c.want)
		}
	}
}
