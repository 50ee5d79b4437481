//go:build !(linux && cgo)

package dist

import (
	"fmt"
	goruntime "runtime"
)

func openMPI(o Options) (Comm, error) {
	return nil, fmt.Errorf("dist: this process was started by mpirun, but this kiln was built without cgo or not for Linux (%s/%s) and cannot load Open MPI; rebuild with CGO_ENABLED=1 on Linux, and install Open MPI (%s)",
		goruntime.GOOS, goruntime.GOARCH, InstallHint)
}

// canLoadMPI reports whether this build can dlopen Open MPI.
const canLoadMPI = false
