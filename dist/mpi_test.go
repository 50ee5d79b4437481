package dist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// The MPI tests launch this test binary under mpirun; workerEnv tells the
// copies which worker to run instead of the tests (TestMain). The knobs
// that make a rank fail or hang exist only here, in the test binary.
const (
	workerEnv   = "KILN_DIST_TEST_WORKER"
	badRankEnv  = "KILN_DIST_TEST_BAD_RANK"
	badStepEnv  = "KILN_DIST_TEST_BAD_STEP"
	workerSteps = 4
)

func TestMain(m *testing.M) {
	if w := os.Getenv(workerEnv); w != "" {
		if err := worker(w); err != nil {
			fmt.Fprintf(os.Stderr, "worker %s: %v\n", w, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// worker runs one rank. Mode "collectives" checks every collective and
// prints "rank R sum SHA" (the hash of its all-reduced vector); "exit"
// and "hang" make rank $KILN_DIST_TEST_BAD_RANK exit with status 3, or
// sleep forever, at step $KILN_DIST_TEST_BAD_STEP.
func worker(mode string) error {
	c, err := FromEnv()
	if err != nil {
		return err
	}
	r, n := c.Rank(), c.Size()
	// Go must still turn a nil dereference into a panic: Open MPI's
	// backtrace handlers (opal_signal) must not have replaced Go's.
	if err := nilDeref(); err == nil {
		return fmt.Errorf("rank %d: nil dereference did not panic", r)
	}
	if err := backgroundProgress(c); err != nil {
		return err
	}
	if err := overlapping(c); err != nil {
		return err
	}
	bad, _ := strconv.Atoi(os.Getenv(badRankEnv))
	badStep, _ := strconv.Atoi(os.Getenv(badStepEnv))
	for step := 0; step < workerSteps; step++ {
		SetStep(c, step)
		if r == bad && step == badStep {
			switch mode {
			case "exit":
				fmt.Fprintf(os.Stderr, "rank %d: deliberate failure at step %d\n", r, step)
				os.Exit(3)
			case "hang":
				select {}
			case "freeze":
				// The whole process stops, MPI progress included.
				syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			case "freeze-inside":
				// Start the step's first sum (announcing it to rank 0),
				// then stop inside it: the others join it later.
				if _, err := c.IallreduceSum(rankData(r, 100003)); err != nil {
					return err
				}
				time.Sleep(200 * time.Millisecond)
				syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			case "abort":
				c.Abort(5, fmt.Sprintf("deliberate abort at step %d", step))
			case "busy":
				// Rank-local work three timeouts long, announced.
				o, _ := OptionsFromEnv()
				for end := time.Now().Add(3 * o.Timeout); time.Now().Before(end); {
					KeepAlive(c)
					time.Sleep(50 * time.Millisecond)
				}
			}
		}
		if mode == "freeze-inside" && step == badStep && r != bad {
			// Join the bad rank's sum once it has stopped inside it (a
			// blocking sum, as synchronized BatchNorm's): it never ends.
			time.Sleep(time.Second)
			if err := c.AllreduceSum(rankData(r, 100003)); err != nil {
				return err
			}
		}
		// Overlap: start a sum, compute, then a second, then wait.
		a := rankData(r, 100003)
		ra, err := c.IallreduceSum(a)
		if err != nil {
			return err
		}
		b := make([]float32, 17)
		for i := range b {
			b[i] = float32(r*i + step)
		}
		rb, err := c.IallreduceSum(b)
		if err != nil {
			return err
		}
		if err := ra.Wait(); err != nil {
			return err
		}
		if err := rb.Wait(); err != nil {
			return err
		}
		for i, v := range b {
			if want := float32(n*(n-1)/2*i + n*step); v != want {
				return fmt.Errorf("rank %d: b[%d] = %v, want %v", r, i, v, want)
			}
		}
		// Every rank must hold the same bits: compare with rank 0's.
		raw := f32bytes(a)
		ref := append([]byte(nil), raw...)
		if err := c.Bcast(ref, 0); err != nil {
			return err
		}
		if !bytes.Equal(raw, ref) {
			return fmt.Errorf("rank %d: all-reduced vector differs from rank 0's", r)
		}
		// And be the sum up to rounding.
		// float32 rounding: at most n-1 additions, each off by half an
		// ulp of a partial sum bounded by the sum of magnitudes.
		want, mag := make([]float64, len(a)), make([]float64, len(a))
		for q := 0; q < n; q++ {
			for i, v := range rankData(q, len(a)) {
				want[i] += float64(v)
				mag[i] += math.Abs(float64(v))
			}
		}
		for i := range a {
			if d := math.Abs(float64(a[i]) - want[i]); d > float64(n)*0x1p-24*mag[i] {
				return fmt.Errorf("rank %d: a[%d] = %v, want %v", r, i, a[i], want[i])
			}
		}
		d := []float64{float64(r), 1}
		if err := c.AllreduceSum64(d); err != nil {
			return err
		}
		if d[0] != float64(n*(n-1)/2) || d[1] != float64(n) {
			return fmt.Errorf("rank %d: AllreduceSum64 = %v", r, d)
		}
		msg := []byte(fmt.Sprintf("step %d from rank %d", step, n-1))
		if r != n-1 {
			msg = bytes.Repeat([]byte{'?'}, len(msg))
		}
		if err := c.Bcast(msg, n-1); err != nil {
			return err
		}
		if want := fmt.Sprintf("step %d from rank %d", step, n-1); string(msg) != want {
			return fmt.Errorf("rank %d: Bcast gave %q, want %q", r, msg, want)
		}
		if err := c.Barrier(); err != nil {
			return err
		}
		if step == workerSteps-1 {
			fmt.Printf("rank %d sum %x\n", r, sha256.Sum256(raw))
		}
	}
	return c.Close()
}

// backgroundProgress checks that an IallreduceSum completes while its
// caller does not call into dist at all (the progress goroutine drives it).
func backgroundProgress(c Comm) error {
	buf := make([]float32, 1<<16)
	for i := range buf {
		buf[i] = 1
	}
	q, err := c.IallreduceSum(buf)
	if err != nil {
		return err
	}
	if mq, ok := q.(interface{ done() bool }); ok {
		deadline := time.Now().Add(20 * time.Second)
		for !mq.done() {
			if time.Now().After(deadline) {
				return fmt.Errorf("rank %d: IallreduceSum made no progress in 20s without Wait", c.Rank())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := q.Wait(); err != nil {
		return err
	}
	if buf[0] != float32(c.Size()) || buf[len(buf)-1] != float32(c.Size()) {
		return fmt.Errorf("rank %d: IallreduceSum of ones gave %v", c.Rank(), buf[0])
	}
	// A request that is never waited for must not leak its buffer's pin
	// (the runtime panics when it collects a Pinner still pinning).
	q, err = c.IallreduceSum(make([]float32, 10))
	if err != nil {
		return err
	}
	if mq, ok := q.(interface{ done() bool }); ok {
		for !mq.done() {
			time.Sleep(time.Millisecond)
		}
	}
	q = nil
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	return c.Barrier()
}

// overlapping starts all-reduces of several sizes around the chunk size
// (KILN_DIST_CHUNK_BYTES; TestMPIChunked sets 4 KB = 1024 float32s) and a
// broadcast, all outstanding at once, then waits in reverse order: their
// chunks share one queue and window, so a chunk started out of order on
// one rank would mix two collectives. Values are small integers, so every
// sum is exact whatever the order of additions.
func overlapping(c Comm) error {
	r, n := c.Rank(), c.Size()
	sizes := []int{1, 1023, 1024, 1025, 5000, 3 * 1024}
	bufs := make([][]float32, len(sizes))
	var reqs []Request
	for k, size := range sizes {
		bufs[k] = make([]float32, size)
		for i := range bufs[k] {
			bufs[k][i] = float32((r+1)*(i%97) + k)
		}
		q, err := c.IallreduceSum(bufs[k])
		if err != nil {
			return err
		}
		reqs = append(reqs, q)
	}
	for k := len(reqs) - 1; k >= 0; k-- {
		if err := reqs[k].Wait(); err != nil {
			return err
		}
	}
	for k, b := range bufs {
		for i, v := range b {
			if want := float32(n*(n+1)/2*(i%97) + n*k); v != want {
				return fmt.Errorf("rank %d: overlapping all-reduce %d (%d floats): [%d] = %v, want %v", r, k, len(b), i, v, want)
			}
		}
	}
	msg := make([]byte, 10000)
	for i := range msg {
		msg[i] = byte(i % 251)
		if r != 1%n {
			msg[i] = 0
		}
	}
	if err := c.Bcast(msg, 1%n); err != nil {
		return err
	}
	for i, v := range msg {
		if v != byte(i%251) {
			return fmt.Errorf("rank %d: chunked Bcast: [%d] = %d, want %d", r, i, v, i%251)
		}
	}
	return nil
}

var nilPtr *int

// nilDeref dereferences a nil pointer and returns the recovered panic.
func nilDeref() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	return fmt.Errorf("%d", *nilPtr)
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		u := math.Float32bits(x)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return b
}

// needBinding stops the test when this build cannot load Open MPI.
func needBinding(t *testing.T) {
	t.Helper()
	if !canLoadMPI {
		testenv.Missing(t, "cgo: this test binary was built without cgo and cannot dlopen Open MPI")
	}
}

// mpirun runs np copies of this test binary as worker mode and returns
// their combined output and mpirun's error.
func mpirun(t *testing.T, np int, mode string, env ...string) (string, error) {
	t.Helper()
	needBinding(t)
	testenv.MPI(t)
	argv, err := MpirunCommand(np, os.Args[0], "-test.run=^$")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), testenv.MPIJobEnv(t)...), append([]string{workerEnv + "=" + mode}, env...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s: still running after 2 minutes:\n%s", strings.Join(argv, " "), out)
	}
	return string(out), err
}

func TestMPICollectives(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ np, runs int }{{2, 1}, {3, 2}} {
		np := tc.np
		t.Run(fmt.Sprint(np), func(t *testing.T) {
			t.Parallel()
			var first []string
			for run := 0; run < tc.runs; run++ {
				out, err := mpirun(t, np, "collectives")
				if err != nil {
					t.Fatalf("mpirun -np %d: %v\n%s", np, err, out)
				}
				sums := regexp.MustCompile(`rank \d+ sum ([0-9a-f]+)`).FindAllStringSubmatch(out, -1)
				if len(sums) != np {
					t.Fatalf("want %d ranks' sums, got output:\n%s", np, out)
				}
				var got []string
				for _, s := range sums {
					got = append(got, s[1])
				}
				if run == 0 {
					first = got
				} else if got[0] != first[0] {
					t.Errorf("run 2's all-reduced vector differs from run 1's: not deterministic")
				}
			}
		})
	}
}

// TestMPIChunked runs the collectives worker with 4 KB chunks, so that its
// all-reduces (up to 400 KB) and broadcasts are split into many chunks, several
// ops' chunks queue at once, and the window of chunks in flight is full.
func TestMPIChunked(t *testing.T) {
	t.Parallel()
	for _, np := range []int{2, 3} {
		t.Run(fmt.Sprint(np), func(t *testing.T) {
			t.Parallel()
			out, err := mpirun(t, np, "collectives", chunkEnv+"=4096")
			if err != nil {
				t.Fatalf("mpirun -np %d: %v\n%s", np, err, out)
			}
			if got := len(regexp.MustCompile(`rank \d+ sum [0-9a-f]+`).FindAllString(out, -1)); got != np {
				t.Fatalf("want %d ranks' sums, got output:\n%s", np, out)
			}
		})
	}
}

func TestChunkElems(t *testing.T) {
	for _, tc := range []struct {
		env        string
		elem, want int
	}{
		{"", 4, defaultChunkBytes / 4},
		{"", 1, defaultChunkBytes},
		{"4096", 4, 1024},
		{"4096", 8, 512},
		{"3", 4, 1}, // at least one element
		{"junk", 4, defaultChunkBytes / 4},
		{"-5", 4, defaultChunkBytes / 4},
		{"99999999999", 1, maxCount},
	} {
		t.Setenv(chunkEnv, tc.env)
		if got := chunkElems(tc.elem); got != tc.want {
			t.Errorf("%s=%q: chunkElems(%d) = %d, want %d", chunkEnv, tc.env, tc.elem, got, tc.want)
		}
	}
}

func TestMPIRankExitEndsJob(t *testing.T) {
	t.Parallel()
	start := time.Now()
	out, err := mpirun(t, 3, "exit", badRankEnv+"=2", badStepEnv+"=1", TimeoutEnv+"=60s")
	if err == nil {
		t.Fatalf("job with a failing rank succeeded:\n%s", out)
	}
	for _, want := range []string{"rank 2: deliberate failure at step 1", "Process name: [[", ",2]", "Exit code:    3"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the job took %v to end (the timeout was 60s; mpirun should end it at once)", d)
	}
}

func TestMPIAbort(t *testing.T) {
	t.Parallel()
	out, err := mpirun(t, 2, "abort", badRankEnv+"=1", badStepEnv+"=1")
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 5 {
		t.Errorf("mpirun: %v, want exit status 5", err)
	}
	// Kiln's own message is what the user must see. Open MPI's
	// "MPI_ABORT was invoked on rank 1" banner goes through its show_help
	// machinery, which can fail under load ("ORTE_ERROR_LOG: Out of
	// resource in file show_help.c") while the abort itself works, so it is
	// not required.
	if !strings.Contains(out, "kiln: rank 1: deliberate abort at step 1") {
		t.Errorf("output lacks the abort message:\n%s", out)
	}
}

// TestMPIKeepAlive checks that a rank busy with announced local work for
// longer than the timeout, while the others wait, does not end the job.
func TestMPIKeepAlive(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ np, bad int }{{3, 2}, {2, 0}} {
		t.Run(fmt.Sprintf("rank%d", tc.bad), func(t *testing.T) {
			t.Parallel()
			out, err := mpirun(t, tc.np, "busy", fmt.Sprintf("%s=%d", badRankEnv, tc.bad), badStepEnv+"=1", TimeoutEnv+"=1s")
			if err != nil || strings.Count(out, " sum ") != tc.np {
				t.Errorf("job with a busy rank failed: %v\n%s", err, out)
			}
		})
	}
}

func TestMPIHungRankTimesOut(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode          string
		np, bad, step int
		want          string
	}{
		{"hang", 3, 2, 2, "kiln: rank 2 did not reach step 2 within 2s"},
		{"hang", 2, 0, 1, "kiln: rank 0 did not reach step 1 within 2s"},
		// Rank 0 frozen (SIGSTOP): rank 1 gives up on its own.
		{"freeze", 2, 0, 1, "rank 0 has not been heard from since"},
		// Rank 2 stopped inside a sum every rank reached: named as the
		// rank that stopped answering rank 0's pings.
		{"freeze-inside", 3, 2, 1, "kiln: rank 2 has not answered for"},
	} {
		t.Run(fmt.Sprintf("%s%d", tc.mode, tc.bad), func(t *testing.T) {
			t.Parallel()
			out, err := mpirun(t, tc.np, tc.mode, fmt.Sprintf("%s=%d", badRankEnv, tc.bad), fmt.Sprintf("%s=%d", badStepEnv, tc.step), TimeoutEnv+"=2s")
			if err == nil {
				t.Fatalf("job with a hung rank succeeded:\n%s", out)
			}
			// The job failed (above) with Kiln's message naming the rank;
			// Open MPI's "MPI_ABORT was invoked" banner is not required, as
			// its show_help machinery can fail under load (TestMPIAbort).
			if !strings.Contains(out, tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestFromEnvMissingLibrary checks the message under mpirun (simulated by
// its environment variable) when libmpi cannot be loaded.
func TestFromEnvMissingLibrary(t *testing.T) {
	needBinding(t)
	t.Setenv("OMPI_COMM_WORLD_SIZE", "2")
	t.Setenv(LibraryEnv, "libkiln-no-such-mpi.so.40")
	_, err := FromEnv()
	if err == nil {
		t.Fatal("FromEnv succeeded with a missing libmpi")
	}
	for _, want := range []string{"started by mpirun", "libkiln-no-such-mpi.so.40", "apt-get install libopenmpi-dev openmpi-bin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
