//go:build !(linux && cgo)

package cuda

import (
	"fmt"
	goruntime "runtime"
)

// LoadDriver fails: without cgo on Linux the runtime cannot dlopen
// libcuda.so.1. The error wraps ErrNoDriver and says how to rebuild.
func LoadDriver() (Driver, error) {
	return nil, fmt.Errorf("%w: this kiln runtime was built without cgo or not for Linux (%s/%s) and cannot load it; rebuild with CGO_ENABLED=1 on Linux",
		ErrNoDriver, goruntime.GOOS, goruntime.GOARCH)
}
