package rt

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// adviseHugePages asks for transparent huge pages on large mappings (many
// distributions only grant them on request): fewer TLB misses when kernels
// stream through a multi-megabyte arena. Failure is harmless.
func adviseHugePages(mem []byte) {
	if len(mem) >= 4<<20 {
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
}

// dropPages releases the pages of a read-only shared file mapping from this
// process (they stay in the page cache and read back unchanged). Only whole
// pages inside mem are released. Never call it on Go or anonymous memory.
func dropPages(mem []byte) {
	if len(mem) == 0 {
		return
	}
	start := uintptr(unsafe.Pointer(&mem[0]))
	page := uintptr(unix.Getpagesize())
	lo := (start + page - 1) &^ (page - 1)
	hi := (start + uintptr(len(mem))) &^ (page - 1)
	if hi <= lo {
		return
	}
	_ = unix.Madvise(mem[lo-start:hi-start], unix.MADV_DONTNEED)
}
