// Package dist is Kiln's collective-communication layer for data-parallel training.
//
// A Comm is one rank of a group of processes (or, for tests, goroutines)
// that run the same program and call the same collectives in the same
// order. Three implementations exist:
//
//   - Local: a group of one; every collective is a no-op.
//   - Loopback: n ranks inside one process (goroutines), for tests. Sums are
//     computed in rank order ((b0+b1)+b2)+…, so they are deterministic and
//     bit-identical on every rank.
//   - MPI (FromEnv under mpirun): Open MPI loaded at run time with dlopen, so
//     a kiln binary needs no MPI to build or to run single-process. All MPI
//     calls are made by one goroutine locked to its OS thread
//     (MPI_THREAD_FUNNELED); it polls outstanding nonblocking collectives
//     with MPI_Test so that they progress while the caller computes, and
//     enforces Options.Timeout on every collective: a rank that hangs ends
//     the whole job through MPI_Abort with a message naming it (see
//     mpi.go for the heartbeat protocol).
//
// The interface is deliberately small (all-reduce, broadcast, barrier) so
// that the same trainer maps to NCCL on GPU machines later.
package dist

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Comm is one rank's handle on a communicator. Every rank must call the
// collectives in the same order with buffers of the same length; a Comm is
// not safe for concurrent use by several goroutines issuing collectives
// (issue them from one goroutine, then Wait from anywhere).
type Comm interface {
	Rank() int
	Size() int
	// AllreduceSum replaces buf, on every rank, by the element-wise sum over ranks.
	AllreduceSum(buf []float32) error
	// IallreduceSum starts AllreduceSum; buf must not be read or written until the Request's Wait returns.
	IallreduceSum(buf []float32) (Request, error)
	AllreduceSum64(buf []float64) error
	// Bcast copies root's buf into every rank's buf (same length everywhere).
	Bcast(buf []byte, root int) error
	Barrier() error
	// Close finalizes (MPI_Finalize for MPI); Abort ends the whole job with code, after printing msg.
	Close() error
	Abort(code int, msg string)
}

// Request is an outstanding nonblocking collective.
type Request interface{ Wait() error }

// Options configure an MPI communicator (and a Loopback one).
type Options struct {
	// Timeout bounds every collective: a collective not complete after
	// Timeout ends the job naming the ranks that did not reach it.
	// Zero means DefaultTimeout; negative disables the check.
	Timeout time.Duration
	// Library is the Open MPI shared library to load; empty means
	// libmpi.so.40, then libmpi.so.
	Library string
}

// DefaultTimeout is the collective timeout when neither Options.Timeout nor
// KILN_DIST_TIMEOUT says otherwise. It is generous: one step of
// Inception-v4 on a slow machine takes tens of seconds.
const DefaultTimeout = 5 * time.Minute

// Environment variables read by OptionsFromEnv.
const (
	// TimeoutEnv sets Options.Timeout: a Go duration ("30s", "2m") or a
	// number of seconds.
	TimeoutEnv = "KILN_DIST_TIMEOUT"
	// LibraryEnv sets Options.Library (the libmpi to dlopen).
	LibraryEnv = "KILN_MPI_LIB"
)

// InstallHint is what to install for multi-process runs.
const InstallHint = "apt-get install libopenmpi-dev openmpi-bin"

// OptionsFromEnv returns Options from KILN_DIST_TIMEOUT and KILN_MPI_LIB.
func OptionsFromEnv() (Options, error) {
	var o Options
	if v := strings.TrimSpace(os.Getenv(TimeoutEnv)); v != "" {
		d, err := parseDuration(v)
		if err != nil {
			return o, fmt.Errorf("%s=%q: %v", TimeoutEnv, v, err)
		}
		o.Timeout = d
	}
	o.Library = os.Getenv(LibraryEnv)
	return o, nil
}

func parseDuration(v string) (time.Duration, error) {
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(s * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 30s or 2m, or a number of seconds")
	}
	return d, nil
}

func (o Options) timeout() time.Duration {
	if o.Timeout == 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// UnderMPI reports whether this process was started by mpirun (Open MPI
// sets OMPI_COMM_WORLD_SIZE; PMIx launchers set PMIX_RANK).
func UnderMPI() bool {
	return os.Getenv("OMPI_COMM_WORLD_SIZE") != "" || os.Getenv("PMIX_RANK") != ""
}

// FromEnv returns the MPI communicator when this process was started by mpirun (OMPI_COMM_WORLD_SIZE / PMIX_RANK set), Local otherwise. Under mpirun without a loadable Open MPI it returns an error that says what to install (apt-get install libopenmpi-dev openmpi-bin).
func FromEnv() (Comm, error) {
	o, err := OptionsFromEnv()
	if err != nil {
		return nil, err
	}
	return Open(o)
}

// Open is FromEnv with explicit options (environment variables are not read).
func Open(o Options) (Comm, error) {
	if !UnderMPI() {
		return Local(), nil
	}
	return openMPI(o)
}

// Stats are the communication totals of one rank.
type Stats struct {
	Calls   int64         // collectives issued
	Bytes   int64         // payload bytes of those collectives (per rank, not on the wire)
	Waiting time.Duration // time callers spent blocked in collectives and Wait
}

// StatsOf returns c's communication totals (zero for a Comm that keeps none).
func StatsOf(c Comm) Stats {
	if s, ok := c.(interface{ Stats() Stats }); ok {
		return s.Stats()
	}
	return Stats{}
}

// SetStep tells c which training step the caller is in; a timeout message
// then names the step a missing rank did not reach ("rank 2 did not reach
// step 14 within 30s"). Comms that do not track steps ignore it.
func SetStep(c Comm, step int) {
	if s, ok := c.(interface{ SetStep(int) }); ok {
		s.SetStep(step)
	}
}

// KeepAlive tells the job that this rank is busy with rank-local work
// (evaluation, writing a checkpoint) while the other ranks may be waiting
// in a collective: with MPI, a rank that stays behind the others is taken
// for hung only if it has not called KeepAlive for the timeout either. Call
// it at least every few seconds during such work; it does not block and
// is cheap enough to call per batch. Comms without hang detection ignore it.
func KeepAlive(c Comm) {
	if k, ok := c.(interface{ KeepAlive() }); ok {
		k.KeepAlive()
	}
}

// Local returns a group of one rank, in which every collective is a no-op.
func Local() Comm { return local{} }

type local struct{}

func (local) Rank() int                                    { return 0 }
func (local) Size() int                                    { return 1 }
func (local) AllreduceSum(buf []float32) error             { return nil }
func (local) IallreduceSum(buf []float32) (Request, error) { return doneRequest{}, nil }
func (local) AllreduceSum64(buf []float64) error           { return nil }
func (local) Close() error                                 { return nil }
func (local) Barrier() error                               { return nil }
func (local) Abort(code int, msg string)                   { abortProcess(code, msg) }
func (local) Bcast(buf []byte, root int) error {
	if root != 0 {
		return fmt.Errorf("dist: bcast root %d out of range for 1 rank", root)
	}
	return nil
}

type doneRequest struct{ err error }

func (r doneRequest) Wait() error { return r.err }

// abortProcess prints msg and exits with code (at least 1).
func abortProcess(code int, msg string) {
	if code == 0 {
		code = 1
	}
	fmt.Fprintln(os.Stderr, "kiln: "+strings.TrimSuffix(msg, "\n"))
	os.Exit(code)
}
