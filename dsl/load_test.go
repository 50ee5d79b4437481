package dsl

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sandboxTree builds the directory tree of TestImportSandbox under a temp
// directory and returns its root:
//
//	net/main.kiln          (written per case)
//	net/sub/ok.kiln        an allowed import
//	net/notes.txt          not a .kiln file
//	net/big.kiln           over the 4 MiB limit
//	net/dir.kiln/          a directory
//	net/fifo.kiln          a FIFO
//	net/link.kiln    ->    ../outside.kiln (a symlink out of the tree)
//	net/environ.kiln ->    /proc/self/environ
//	outside.kiln           beside the tree
//	lib/shared.kiln        for --import-path
func sandboxTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	block := []byte("block twice(x) {\n return x + x\n}\n")
	write := func(name string, data []byte) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("net/sub/ok.kiln", block)
	write("net/notes.txt", block)
	write("net/big.kiln", append(block, make([]byte, 5<<20)...))
	write("outside.kiln", block)
	write("lib/shared.kiln", block)
	if err := os.Mkdir(filepath.Join(root, "net/dir.kiln"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "net/fifo.kiln"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside.kiln", filepath.Join(root, "net/link.kiln")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/proc/self/environ", filepath.Join(root, "net/environ.kiln")); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestImportSandbox checks that imports resolve only inside the importing
// file's directory tree, the --import-path directories and the library,
// only to regular .kiln files of bounded size, and that a refused import
// fails fast with an error at the import's position that shows nothing of
// the refused file (issue 11: `import "../../../../../proc/self/environ"`
// printed the environment; importing a FIFO hung).
func TestImportSandbox(t *testing.T) {
	t.Setenv("KILN_SANDBOX_SECRET", "s3cr3t-value")
	root := sandboxTree(t)
	lib := filepath.Join(root, "lib")
	tests := []struct {
		name       string
		imp        string
		importPath []string
		want       string // "" = loads; else a substring of the error
	}{
		{"subdirectory", "sub/ok.kiln", nil, ""},
		{"bare name", "sub/ok", nil, ""},
		{"built-in library", "blocks", nil, ""},
		{"dotdot out of the tree", "../outside.kiln", nil, "is outside the importing file's directory tree"},
		{"dotdot in and out", "sub/../../outside.kiln", nil, "is outside the importing file's directory tree"},
		{"proc by traversal", strings.Repeat("../", 30) + "proc/self/environ", nil, "is outside the importing file's directory tree"},
		{"proc status by traversal", strings.Repeat("../", 30) + "proc/self/status.txt", nil, "only .kiln files can be imported"},
		{"proc by traversal with .kiln", strings.Repeat("../", 30) + "proc/self/environ.kiln", nil, "is outside the importing file's directory tree"},
		{"absolute", filepath.Join(root, "outside.kiln"), nil, "import paths must be relative"},
		{"absolute proc", "/proc/self/environ", nil, "import paths must be relative"},
		{"symlink out of the tree", "link.kiln", nil, "outside the importing file's directory tree"},
		{"symlink to proc", "environ.kiln", nil, "outside the importing file's directory tree"},
		{"fifo", "fifo.kiln", nil, "is not a regular file (a named pipe)"},
		{"directory", "dir.kiln", nil, "is not a regular file (a directory)"},
		{"not .kiln", "notes.txt", nil, "only .kiln files can be imported"},
		{"too large", "big.kiln", nil, "file too large"},
		{"missing", "nope.kiln", nil, "file not found"},
		{"sibling without --import-path", "shared.kiln", nil, "file not found"},
		{"sibling by dotdot without --import-path", "../lib/shared.kiln", nil, "is outside"},
		{"--import-path", "shared.kiln", []string{lib}, ""},
		{"--import-path by dotdot", "../lib/shared.kiln", []string{lib}, ""},
		{"--import-path does not open the rest", "../outside.kiln", []string{lib}, "is outside"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			main := filepath.Join(root, "net", "main.kiln")
			src := "# test\nimport \"" + tc.imp + "\"\nnetwork n(x: f32[N, 3, 4, 4]) { return x }\n"
			if err := os.WriteFile(main, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := LoadFile(main, Options{ImportPath: tc.importPath})
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("LoadFile did not return within 10s (blocked on the import?)")
			}
			if tc.want == "" {
				if err != nil {
					t.Fatalf("LoadFile: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadFile accepted import %q; want an error containing %q", tc.imp, tc.want)
			}
			var ds Diagnostics
			if !errors.As(err, &ds) || len(ds) != 1 {
				t.Fatalf("err = %v, want one diagnostic", err)
			}
			d := ds[0]
			if d.Pos.File != main || d.Pos.Line != 2 || d.Pos.Col != 1 {
				t.Errorf("diagnostic at %s, want %s:2:1 (the import)", d.Pos, main)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
			if strings.Contains(msg, "s3cr3t") || strings.Contains(msg, "twice") {
				t.Errorf("error shows the refused file's contents:\n%s", msg)
			}
		})
	}
}

// TestImportTotalBudget checks the limit on all imported sources together.
func TestImportTotalBudget(t *testing.T) {
	dir := t.TempDir()
	body := "block b%d(x) {\n return x\n}\n# " + strings.Repeat("x", 600) + "\n"
	var imports strings.Builder
	for i := 0; i < 5; i++ {
		name := filepath.Join(dir, "f"+string(rune('0'+i))+".kiln")
		if err := os.WriteFile(name, []byte(strings.Replace(body, "%d", string(rune('0'+i)), 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		imports.WriteString("import \"f" + string(rune('0'+i)) + ".kiln\"\n")
	}
	main := filepath.Join(dir, "main.kiln")
	if err := os.WriteFile(main, []byte(imports.String()+"network n(x: f32[N, 3, 4, 4]) { return x }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(main, Options{}); err != nil {
		t.Fatalf("within the default limits: %v", err)
	}
	_, err := LoadFile(main, Options{Limits: Limits{MaxTotalBytes: 2000}})
	if err == nil || !strings.Contains(err.Error(), "main.kiln:4:1: cannot import \"f3.kiln\": the imported sources exceed 2000 bytes in all") {
		t.Fatalf("err = %v, want the total limit at the 4th import", err)
	}
}

// TestSourceLineShown checks that diagnostics show only text lines.
func TestSourceLineShown(t *testing.T) {
	tests := []struct {
		src  string
		want string
	}{
		{"a = 1\n\tb = 2\n", "\tb = 2"},
		{"a\nb\x00c\n", ""},
		{"a\nb\x1b[31mc\n", ""},
		{"a\n\xff\xfe\n", ""},
		{"a\n" + strings.Repeat("x", maxShownLine+1) + "\n", ""},
	}
	for _, tc := range tests {
		if got := sourceLine([]byte(tc.src), 2); got != tc.want {
			t.Errorf("sourceLine(%q, 2) = %q, want %q", tc.src, got, tc.want)
		}
	}
}
