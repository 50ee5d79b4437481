package dist

import (
	"math"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"
)

// runRanks runs f on every rank concurrently and returns their errors.
func runRanks(cs []Comm, f func(c Comm) error) []error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for r, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(c)
		}()
	}
	wg.Wait()
	return errs
}

// rankData returns rank r's deterministic test vector.
func rankData(r, n int) []float32 {
	rng := rand.New(rand.NewSource(int64(1000 + r)))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.Intn(7)-3)))
	}
	return v
}

func TestLoopbackAllreduceRankOrder(t *testing.T) {
	for _, tc := range []struct{ ranks, n int }{{1, 5}, {2, 1}, {3, 1000}, {4, 4097}, {7, 33}} {
		cs := Loopback(tc.ranks)
		// The reference: ((b0+b1)+b2)+… element by element.
		want := rankData(0, tc.n)
		for r := 1; r < tc.ranks; r++ {
			for i, v := range rankData(r, tc.n) {
				want[i] += v
			}
		}
		for round := 0; round < 3; round++ {
			got := make([][]float32, tc.ranks)
			errs := runRanks(cs, func(c Comm) error {
				got[c.Rank()] = rankData(c.Rank(), tc.n)
				return c.AllreduceSum(got[c.Rank()])
			})
			for r := range got {
				if errs[r] != nil {
					t.Fatalf("%d ranks: rank %d: %v", tc.ranks, r, errs[r])
				}
				for i := range want {
					if math.Float32bits(got[r][i]) != math.Float32bits(want[i]) {
						t.Fatalf("%d ranks, round %d: rank %d [%d] = %v, want %v (rank order)", tc.ranks, round, r, i, got[r][i], want[i])
					}
				}
			}
		}
	}
}

func TestLoopbackAllreduce64BcastBarrier(t *testing.T) {
	const n = 4
	cs := Loopback(n)
	errs := runRanks(cs, func(c Comm) error {
		r := c.Rank()
		d := []float64{float64(r), 1, float64(r * r)}
		if err := c.AllreduceSum64(d); err != nil {
			return err
		}
		if d[0] != 6 || d[1] != 4 || d[2] != 14 {
			t.Errorf("rank %d: AllreduceSum64 = %v, want [6 4 14]", r, d)
		}
		b := []byte{byte(r), byte(r), byte(r)}
		if err := c.Bcast(b, 2); err != nil {
			return err
		}
		if string(b) != "\x02\x02\x02" {
			t.Errorf("rank %d: Bcast from 2 = %v", r, b)
		}
		return c.Barrier()
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	if s := StatsOf(cs[1]); s.Calls != 3 || s.Bytes != 3*8+3 {
		t.Errorf("stats = %+v, want 3 calls, 27 bytes", s)
	}
}

// TestLoopbackIallreduceOverlap checks that IallreduceSum returns before
// the other ranks arrive, that several may be outstanding, and that they
// complete in issue order with the right sums.
func TestLoopbackIallreduceOverlap(t *testing.T) {
	cs := Loopback(2)
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Error("rank 0's IallreduceSum blocked until rank 1 arrived")
		}
		close(release)
	}()
	errs := runRanks(cs, func(c Comm) error {
		a := []float32{float32(c.Rank() + 1)}
		b := []float32{float32(10 * (c.Rank() + 1))}
		if c.Rank() == 1 {
			<-release // rank 1 arrives only after rank 0 has started both
		}
		ra, err := c.IallreduceSum(a)
		if err != nil {
			return err
		}
		rb, err := c.IallreduceSum(b)
		if err != nil {
			return err
		}
		if c.Rank() == 0 {
			close(started) // reached: IallreduceSum did not block
		}
		if err := rb.Wait(); err != nil {
			return err
		}
		if err := ra.Wait(); err != nil {
			return err
		}
		if a[0] != 3 || b[0] != 30 {
			t.Errorf("rank %d: sums %v %v, want 3 30", c.Rank(), a[0], b[0])
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestLoopbackMismatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(c Comm) error
		want string
	}{
		{"length", func(c Comm) error { return c.AllreduceSum(make([]float32, 3+c.Rank())) }, "rank 0 has 3 elements but rank 1 has 4"},
		{"kind", func(c Comm) error {
			if c.Rank() == 2 {
				return c.Barrier()
			}
			return c.AllreduceSum(make([]float32, 3))
		}, "rank 2 called Barrier"},
		{"root", func(c Comm) error { return c.Bcast(make([]byte, 2), c.Rank()) }, "rank 0 names root 0 but rank 1 names root 1"},
		{"root range", func(c Comm) error { return c.Bcast(make([]byte, 2), 3) }, "root 3 out of range for 3 ranks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := runRanks(Loopback(3), tc.f)
			for r, err := range errs {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("rank %d: error %v, want one containing %q", r, err, tc.want)
				}
			}
		})
	}
}

func TestLoopbackTimeoutNamesMissingRank(t *testing.T) {
	cs := LoopbackOptions(3, Options{Timeout: 50 * time.Millisecond})
	errs := runRanks(cs[:2], func(c Comm) error { return c.Barrier() }) // rank 2 never comes
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 2 did not reach collective #0 within 50ms") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestLocal(t *testing.T) {
	c := Local()
	b := []float32{1, 2}
	if err := c.AllreduceSum(b); err != nil || b[0] != 1 || b[1] != 2 {
		t.Errorf("AllreduceSum: %v %v", b, err)
	}
	r, err := c.IallreduceSum(b)
	if err != nil || r.Wait() != nil {
		t.Errorf("IallreduceSum: %v", err)
	}
	if err := c.Bcast([]byte{1}, 1); err == nil {
		t.Error("Bcast from root 1 of 1 rank succeeded")
	}
	if c.Rank() != 0 || c.Size() != 1 || c.Barrier() != nil || c.Close() != nil {
		t.Error("Local is not a group of one")
	}
}

func TestOptionsFromEnv(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
		err  bool
	}{{"", 0, false}, {"30s", 30 * time.Second, false}, {"2.5", 2500 * time.Millisecond, false}, {"-1", -time.Second, false}, {"soon", 0, true}} {
		t.Setenv(TimeoutEnv, tc.v)
		o, err := OptionsFromEnv()
		if (err != nil) != tc.err || o.Timeout != tc.want {
			t.Errorf("%s=%q: %v, %v; want %v, error %v", TimeoutEnv, tc.v, o.Timeout, err, tc.want, tc.err)
		}
	}
}

func TestFromEnvWithoutMPIIsLocal(t *testing.T) {
	t.Setenv("OMPI_COMM_WORLD_SIZE", "")
	t.Setenv("PMIX_RANK", "")
	c, err := FromEnv()
	if err != nil || c.Size() != 1 {
		t.Fatalf("FromEnv outside mpirun = %v, %v; want Local", c, err)
	}
}
