package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Interrupting kiln build. A build creates temporary files: the kiln-build-*
// directory the shared object is linked in (compileNetCtx) and the
// .OUT.tmp-* file the executable is written to before it is renamed into
// place (writeExecutableAtomic). Each is registered in tempFiles while it
// exists. On SIGINT or SIGTERM, interruptible cancels the build's context,
// which kills the running compilers (exec.CommandContext) and makes the
// build return, its deferred removals running; if the build has not
// returned within interruptGrace (it may be inside a stage that does not
// look at the context, such as lowering), the signal handler removes every
// registered file itself and exits with status 1.

// interruptGrace is how long the handler waits for the interrupted build to
// unwind by itself.
const interruptGrace = 3 * time.Second

// tempFiles holds the temporary paths of the running build.
var tempFiles struct {
	sync.Mutex
	paths map[string]bool
}

// addTemp registers path (a file or directory) for removal on interrupt.
func addTemp(path string) {
	tempFiles.Lock()
	defer tempFiles.Unlock()
	if tempFiles.paths == nil {
		tempFiles.paths = map[string]bool{}
	}
	tempFiles.paths[path] = true
}

// dropTemp unregisters path (removed, or renamed into place).
func dropTemp(path string) {
	tempFiles.Lock()
	defer tempFiles.Unlock()
	delete(tempFiles.paths, path)
}

// removeTemps removes every registered path; it keeps the lock, so no path
// is registered or renamed into place afterwards (the process is exiting).
func removeTemps() {
	tempFiles.Lock()
	for p := range tempFiles.paths {
		os.RemoveAll(p)
	}
	tempFiles.paths = nil
}

// errInterrupted is returned by a build stopped by a signal.
type errInterrupted struct{ sig os.Signal }

func (e errInterrupted) Error() string {
	return fmt.Sprintf("interrupted by %s: temporary files removed", signalName(e.sig))
}

func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// interruptible runs f with a context cancelled by SIGINT or SIGTERM (see
// above). If a signal arrived, the error returned says so, whatever f
// returned.
func interruptible(stderr io.Writer, cmd string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var (
		mu  sync.Mutex
		got os.Signal
	)
	finished := make(chan struct{})
	go func() {
		var s os.Signal
		select {
		case s = <-sigs:
		case <-finished:
			return
		}
		mu.Lock()
		got = s
		mu.Unlock()
		cancel()
		select {
		case <-finished:
		case <-time.After(interruptGrace):
			removeTemps()
			fmt.Fprintf(stderr, "kiln %s: %v\n", cmd, errInterrupted{s})
			os.Exit(1)
		}
	}()
	err := f(ctx)
	close(finished)
	mu.Lock()
	defer mu.Unlock()
	if got != nil {
		return errInterrupted{got}
	}
	return err
}

// writeExecutableAtomic writes path through write: into a temporary file
// .BASE.tmp-* in path's directory (registered in tempFiles), made
// executable, synced and renamed into place, so that path is either its
// old self or complete.
func writeExecutableAtomic(ctx context.Context, path string, write func(io.Writer) error) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("write %s: not a regular file", path)
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	addTemp(tmp)
	defer dropTemp(tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := &ctxWriter{ctx: ctx, w: f}
	if err := write(w); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}

// ctxWriter fails writes once ctx is done, so an interrupted write of a
// large executable stops at once.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// checkOutputPath refuses an -o that names (through any link) the running
// kiln executable, the runner the build copies, or an input file of the
// build: overwriting it would silently replace the compiler or destroy the
// source. inputs are the paths given on the command line; those that do
// not exist (built-in network names) are ignored.
func checkOutputPath(out, runner string, inputs ...string) error {
	ost, err := os.Stat(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil // a new file cannot be any of them
	}
	if err != nil {
		return fmt.Errorf("-o %s: %w", out, err)
	}
	same := func(p string) bool {
		if p == "" {
			return false
		}
		st, err := os.Stat(p)
		return err == nil && os.SameFile(st, ost)
	}
	if self, err := os.Executable(); err == nil && same(self) {
		return usagef("-o %s is the running kiln executable (%s): refusing to overwrite the compiler", out, self)
	}
	if same(runner) {
		return usagef("-o %s is the kiln runner (%s) the build copies: refusing to overwrite it", out, runner)
	}
	for _, in := range inputs {
		if same(in) {
			return usagef("-o %s is the input file %s: refusing to overwrite a source of the build", out, in)
		}
	}
	return nil
}
