package tensor

import (
	"fmt"
	"io"
	"os"
)

// NPYLimit is the largest .npy file ReadNPYFileLimit accepts for a tensor
// of numel elements: the header (NumPy caps it below 64 KiB in format 2)
// plus numel float64 values, the widest dtype ReadNPY reads.
func NPYLimit(numel int) int64 { return 64<<10 + 8*int64(numel) }

// ReadNPYFileLimit reads a .npy file like ReadNPYFile, but reads at most
// limit bytes: a longer file (or an endless stream such as /dev/zero) is
// refused with an error naming the path and the limit, without reading the
// rest. Directories and devices are refused before reading; regular files,
// pipes and FIFOs (e.g. /dev/stdin) are read.
func ReadNPYFileLimit(path string, limit int64) (*Tensor, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read npy: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read npy: %w", err)
	}
	if m := fi.Mode(); m.IsDir() {
		return nil, fmt.Errorf("read npy %s: is a directory", path)
	} else if m&(os.ModeDevice|os.ModeCharDevice|os.ModeSocket) != 0 {
		return nil, fmt.Errorf("read npy %s: a device or socket, not a file", path)
	}
	if fi.Mode().IsRegular() && fi.Size() > limit {
		return nil, fmt.Errorf("read npy %s: %d bytes, more than the %d this tensor can take", path, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read npy %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read npy %s: more than the %d bytes this tensor can take", path, limit)
	}
	return parseNPY(b, path)
}
