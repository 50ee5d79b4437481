package rt

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// mapAnon returns n bytes of zeroed, page-aligned (hence 64-byte aligned)
// memory outside the Go heap.
func mapAnon(n int) ([]byte, error) {
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	adviseHugePages(mem)
	return mem, nil
}

func unmap(mem []byte) error {
	if mem == nil {
		return nil
	}
	return unix.Munmap(mem)
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }
