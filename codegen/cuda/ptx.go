package cuda

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
)

// llcArgs are the llc-19 arguments compiling NVPTX IR for compute
// capability sm (80, 90) to PTX ISA 7.8, which the H200's driver (CUDA
// 13) JIT-compiles; no CUDA toolkit is needed.
func llcArgs(sm int) []string {
	return []string{"-O3", "-march=nvptx64", fmt.Sprintf("-mcpu=sm_%d", sm), "-mattr=+ptx78"}
}

// PTX compiles m's LLVM IR with llc-19 and stores the PTX text in
// m.Program.PTX. Results are cached by content hash (IR, arguments, llc
// path) in the object cache directory, under ptx/.
func (m *Module) PTX(tc *codegen.Toolchain) error {
	if tc == nil || tc.LLC == "" {
		return fmt.Errorf("cuda: llc-19 not found (the NVPTX back end is needed to build for %s)", m.Program.Target)
	}
	ptx, err := CompilePTX(tc, m.IR.String(), m.Program.SM)
	if err != nil {
		return err
	}
	m.Program.PTX = ptx
	return nil
}

// CompilePTX compiles the NVPTX LLVM IR text ll for sm_<sm> with llc-19
// (cached by content hash) and returns the PTX text.
func CompilePTX(tc *codegen.Toolchain, ll string, sm int) (string, error) {
	args := llcArgs(sm)
	h := sha256.New()
	fmt.Fprintf(h, "kiln-ptx-v1\x00%s\x00%s\x00", tc.LLC, strings.Join(args, " "))
	h.Write([]byte(ll))
	key := hex.EncodeToString(h.Sum(nil))
	var cache string
	if tc.CacheDir != "" {
		cache = filepath.Join(tc.CacheDir, "ptx", key+".ptx")
		if b, err := os.ReadFile(cache); err == nil && bytes.Contains(b, []byte(".entry")) {
			return string(b), nil
		}
	}
	cmd := exec.Command(tc.LLC, append(args, "-o", "-")...)
	cmd.Stdin = strings.NewReader(ll)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cuda: %s %s: %v\n%s", tc.LLC, strings.Join(args, " "), err, stderr.String())
	}
	if cache != "" {
		if err := os.MkdirAll(filepath.Dir(cache), 0o755); err == nil {
			tmp := cache + fmt.Sprintf(".%d.tmp", os.Getpid())
			if os.WriteFile(tmp, out.Bytes(), 0o644) == nil {
				_ = os.Rename(tmp, cache)
			}
		}
	}
	return out.String(), nil
}
