package tests

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// TestBuiltBinaryIntegrity reproduces issue 11's payload faults on a built
// tiny: each damaged copy is refused with a message naming the part and
// exit status 1, never run (wrong output, a crash) nor taken for the plain
// runner ("unknown command" / "carries no compiled network").
func TestBuiltBinaryIntegrity(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	exe := filepath.Join(bin, "tiny")
	cmd := exec.Command(kiln, "build", "tiny", "-o", exe)
	cmd.Env = append(os.Environ(), "KILN_CACHE_DIR="+filepath.Join(work, "cache"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}
	good, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	n := len(good)
	tr := good[n-96:] // the trailer: magic, 6 offsets/sizes, manifest digest, self-check
	field := func(i int) int { return int(binary.LittleEndian.Uint64(tr[8+8*i:])) }
	soOff, soLen, wOff, manOff, manLen := field(0), field(1), field(2), field(4), field(5)
	strip := testenv.LookPath(t, "strip")

	cases := []struct {
		name  string
		edit  func(path string, b []byte) []byte
		env   []string
		want  string // "" means: runs, exit 0
		clean bool   // not a damage: exit 0 expected
	}{
		{"intact", nil, nil, "", true},
		{"one weight byte flipped", func(_ string, b []byte) []byte { b[wOff+1001] ^= 1; return b }, nil, "the weights are damaged", false},
		{"weight flipped, check skipped", func(_ string, b []byte) []byte { b[wOff+1001] ^= 1; return b }, []string{"KILN_WEIGHTS_CHECK=off"}, "", true},
		{"kernel bytes flipped", func(_ string, b []byte) []byte { b[soOff+soLen/2] ^= 0xff; b[soOff+soLen/3] ^= 0x5a; return b },
			[]string{"KILN_WEIGHTS_CHECK=off"}, "the shared object (kernels) is damaged", false},
		{"manifest offset edited", func(_ string, b []byte) []byte {
			man := b[manOff : manOff+manLen]
			i := bytes.Index(man, []byte(`"offset":`))
			if i < 0 {
				t.Fatalf("no offset in %s", man)
			}
			man[i+len(`"offset":`)] ^= 0x01 // a digit changed
			return b
		}, nil, "the manifest is damaged", false},
		{"arena_bytes lowered", func(_ string, b []byte) []byte {
			man := b[manOff : manOff+manLen]
			i := bytes.Index(man, []byte(`"arena_bytes":`)) + len(`"arena_bytes":`)
			man[i] = '1' // a leading digit made smaller (or equal: the digest still differs below)
			man[i+1] ^= 0x01
			return b
		}, nil, "the manifest is damaged", false},
		{"truncated in the weights", func(_ string, b []byte) []byte { return b[:wOff+4096] }, nil, "truncated, or run through strip", false},
		{"trailer magic damaged", func(_ string, b []byte) []byte { b[n-96] = 'k'; return b }, nil, "the trailer's magic", false},
		{"stripped", func(p string, b []byte) []byte {
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(strip, p).CombinedOutput(); err != nil {
				t.Fatalf("strip: %v\n%s", err, out)
			}
			s, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, nil, "run through strip, which removes appended data", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "tiny")
			b := bytes.Clone(good)
			if c.edit != nil {
				b = c.edit(p, b)
			}
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(p, "--bench", "--iters", "1")
			cmd.Env = append(os.Environ(), c.env...)
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if c.clean {
				if code != 0 {
					t.Fatalf("exit %d\n%s", code, out)
				}
				return
			}
			if code != 1 || !strings.Contains(string(out), c.want) || strings.Contains(string(out), "carries no compiled network") {
				t.Fatalf("exit %d, output:\n%s\nwant exit 1 and %q", code, out, c.want)
			}
		})
	}

	// -o never overwrites the compiler, the runner or a source.
	src := filepath.Join(work, "net.kiln")
	if err := os.WriteFile(src, []byte("network n(image: f32[N,3,8,8]) {\n  return relu(image)\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(work, "kiln-link")
	if err := os.Symlink(kiln, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		out  string
		want string
	}{
		{[]string{"build", "tiny"}, kiln, "is the running kiln executable"},
		{[]string{"build", "tiny"}, link, "is the running kiln executable"},
		{[]string{"build", "tiny"}, filepath.Join(bin, "kiln-runner"), "is the kiln runner"},
		{[]string{"build", src}, src, "is the input file " + src},
	} {
		before, _ := os.ReadFile(c.out)
		cmd := exec.Command(kiln, append(c.args, "-o", c.out)...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("kiln %v -o %s: %v\n%s\nwant exit 2 and %q", c.args, c.out, err, out, c.want)
		}
		if after, _ := os.ReadFile(c.out); !bytes.Equal(before, after) {
			t.Errorf("%s was changed", c.out)
		}
	}
}

// TestBuildInterrupted sends SIGINT, then SIGTERM, to kiln build while it
// compiles (a fresh cache, so compilation takes seconds): kiln exits with
// status 1 saying so, and leaves no temporary file behind: no .OUT.tmp-*
// next to the output, no kiln-build-* directory in $TMPDIR, no compiler
// temporary in the cache, and no output.
func TestBuildInterrupted(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and compiles a network")
	}
	bin := t.TempDir()
	kiln := buildKiln(t, bin)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			work, tmp, cache := t.TempDir(), t.TempDir(), t.TempDir()
			out := filepath.Join(work, "net")
			cmd := exec.Command(kiln, "build", "inception_resnet_v1", "--input", "3x75x75", "-o", out)
			cmd.Env = append(os.Environ(), "KILN_CACHE_DIR="+cache, "TMPDIR="+tmp)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Wait until the build is compiling: its kiln-build-* directory
			// exists.
			deadline := time.Now().Add(60 * time.Second)
			for {
				if m, _ := filepath.Glob(filepath.Join(tmp, "kiln-build-*")); len(m) > 0 {
					break
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("the build never started compiling\n%s", stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond)
			start := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Fatalf("kiln build after %v: %v, want exit status 1\n%s", sig, err, stderr.String())
			}
			if want := "interrupted by " + map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]; !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
			}
			t.Logf("exited %v after the signal", time.Since(start).Round(time.Millisecond))
			for _, pat := range []string{filepath.Join(work, "*"), filepath.Join(work, ".*"), filepath.Join(tmp, "*"), filepath.Join(cache, "*", "tmp-*"), filepath.Join(cache, "*", "driver*")} {
				if m, _ := filepath.Glob(pat); len(m) > 0 {
					t.Errorf("left behind: %v", m)
				}
			}
		})
	}
}
