package rt

import "golang.org/x/sys/unix"

// adviseHugePages asks for transparent huge pages on large mappings (many
// distributions only grant them on request): fewer TLB misses when kernels
// stream through a multi-megabyte arena. Failure is harmless.
func adviseHugePages(mem []byte) {
	if len(mem) >= 4<<20 {
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
}
