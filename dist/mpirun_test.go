package dist

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestMpirunFlags(t *testing.T) {
	for _, tc := range []struct {
		env       string
		set       bool
		want, not []string
	}{
		{"", false, []string{"--oversubscribe", "--bind-to", "none", "btl", "self,vader", "btl_vader_single_copy_mechanism"}, nil},
		{"--mca btl self,tcp", true, []string{"--oversubscribe", "btl", "self,tcp"}, []string{"self,vader"}},
		{"", true, []string{"--oversubscribe"}, []string{"self,vader"}},
	} {
		if tc.set {
			t.Setenv(MpirunEnv, tc.env)
		} else {
			t.Setenv(MpirunEnv, "")
			os.Unsetenv(MpirunEnv)
		}
		f := MpirunFlags()
		for _, w := range tc.want {
			if !slices.Contains(f, w) {
				t.Errorf("%s=%q: flags %q lack %q", MpirunEnv, tc.env, f, w)
			}
		}
		for _, w := range tc.not {
			if slices.Contains(f, w) {
				t.Errorf("%s=%q: flags %q contain %q", MpirunEnv, tc.env, f, w)
			}
		}
		if root := os.Geteuid() == 0; root != slices.Contains(f, "--allow-run-as-root") {
			t.Errorf("--allow-run-as-root in %q, running as root: %v", f, root)
		}
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := MpirunCommand(2, "prog"); err == nil || !strings.Contains(err.Error(), InstallHint) {
		t.Errorf("MpirunCommand without mpirun on PATH: %v, want an error naming %q", err, InstallHint)
	}
}
