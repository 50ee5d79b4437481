package dist

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// MpirunEnv is the environment variable whose words, when set, replace
// MpirunFlags' transport choice (e.g. "--mca btl self,tcp").
const MpirunEnv = "KILN_MPIRUN_FLAGS"

// MpirunCommand returns the argv that launches np copies of prog with args
// on this machine through Open MPI's mpirun: the one place where Kiln's
// tests and benchmarks choose mpirun's flags.
//
//   - --allow-run-as-root when running as root (containers, CI);
//   - --oversubscribe so that np may exceed the number of cores;
//   - --bind-to none: ranks sharing a few cores must not be pinned to one;
//   - --mca btl self,vader (shared memory within one machine) with
//     btl_vader_single_copy_mechanism=none, because CMA/ptrace-based single
//     copy is refused in many containers; override with KILN_MPIRUN_FLAGS.
//
// It fails, naming what to install, when mpirun is not on PATH.
func MpirunCommand(np int, prog string, args ...string) ([]string, error) {
	mpirun, err := exec.LookPath("mpirun")
	if err != nil {
		return nil, fmt.Errorf("mpirun not found on PATH; install Open MPI: %s", InstallHint)
	}
	argv := []string{mpirun}
	argv = append(argv, MpirunFlags()...)
	argv = append(argv, "-np", strconv.Itoa(np), prog)
	return append(argv, args...), nil
}

// MpirunFlags returns the flags MpirunCommand passes before -np.
func MpirunFlags() []string {
	var f []string
	if os.Geteuid() == 0 {
		f = append(f, "--allow-run-as-root")
	}
	f = append(f, "--oversubscribe", "--bind-to", "none")
	if v, ok := os.LookupEnv(MpirunEnv); ok {
		return append(f, splitWords(v)...)
	}
	return append(f, "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none")
}

func splitWords(s string) []string {
	var w []string
	cur := ""
	for _, r := range s {
		if r == ' ' || r == '\t' || r == '\n' {
			if cur != "" {
				w = append(w, cur)
				cur = ""
			}
			continue
		}
		cur += string(r)
	}
	if cur != "" {
		w = append(w, cur)
	}
	return w
}
