package trainer

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// startComm is a rank that records when each IallreduceSum is issued and
// completes it as if its buffer also crossed a link of the given
// bandwidth, one transfer at a time (as linkComm, but summing over the
// ranks of Comm).
type startComm struct {
	dist.Comm
	bytesPerSec float64
	busy        time.Time
	mu          sync.Mutex
	starts      []time.Time
}

type startReq struct {
	dist.Request
	done time.Time
}

func (r startReq) Wait() error {
	err := r.Request.Wait()
	time.Sleep(time.Until(r.done))
	return err
}

func (c *startComm) IallreduceSum(buf []float32) (dist.Request, error) {
	start := time.Now()
	c.mu.Lock()
	c.starts = append(c.starts, start)
	c.mu.Unlock()
	if c.busy.After(start) {
		start = c.busy
	}
	c.busy = start.Add(time.Duration(float64(4*len(buf)) / c.bytesPerSec * float64(time.Second)))
	r, err := c.Comm.IallreduceSum(buf)
	return startReq{r, c.busy}, err
}

// overlapNet is a small CNN on side×side images whose backward spends
// most of its time in the large early layers, after the last layers'
// gradients are final.
const overlapNet = `network overlap(x: f32[N, 3, %[1]d, %[1]d]) -> f32[N, 10] {
    k1 = conv2d(x, 16, kernel=3, pad=1, bias=false)
    n1 = batchnorm(k1, eps=0.001)
    k2 = conv2d(relu(n1), 16, kernel=3, pad=1, bias=false)
    n2 = batchnorm(k2, eps=0.001)
    k3 = conv2d(maxpool(relu(n2), 2, stride=2), 32, kernel=3, pad=1, bias=false)
    n3 = batchnorm(k3, eps=0.001)
    k4 = conv2d(relu(n3), 32, kernel=3, pad=1, bias=false)
    n4 = batchnorm(k4, eps=0.001)
    fc = dense(flatten(global_avgpool(relu(n4))), 10)
    return fc
}
`

// overlapStep is what one replica's data-parallel step did.
type overlapStep struct {
	starts  []time.Time // the buckets' IallreduceSum calls
	allDone time.Time   // compiled: the last kernel seen complete
	during  int         // compiled: gradients handed over while kernels ran
}

// runOverlap runs steps data-parallel steps of overlapNet (side×side
// images, batch b per rank) on 2 loopback ranks, each behind a simulated
// link of 2.5 MB/s, with 4 KB buckets, on the compiled backend or the
// interpreter; it returns each rank's params, steps and profile.
func runOverlap(t *testing.T, side, b, steps int, compiled bool) ([]map[string]*tensor.Tensor, [][]overlapStep, []DistProfile) {
	t.Helper()
	const ranks = 2
	p := filepath.Join(t.TempDir(), "overlap.kiln")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(overlapNet, side)), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := dsl.LoadFile(p, dsl.Options{Batch: b})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := train.Split(g, train.StepOptions{Smoothing: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	xs, ys := batches(t, g, steps, ranks*b)
	comms := dist.Loopback(ranks)
	out := make([]map[string]*tensor.Tensor, ranks)
	logs := make([][]overlapStep, ranks)
	profs := make([]DistProfile, ranks)
	errs := make([]error, ranks)
	var wg sync.WaitGroup
	for r := range ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			params := initParams(t, g, ss.State)
			sc := &startComm{Comm: comms[r], bytesPerSec: 2.5e6}
			rep := &Replicas{Comm: sc, BucketBytes: 4 << 10}
			if compiled {
				rep.Compiled = &Compiled{Threads: 1}
				defer rep.Compiled.Close()
			}
			for s := range steps {
				sc.starts = nil
				res, err := rep.Step(ss, params, map[string]*tensor.Tensor{"x": shard(xs[s], r, b), ss.Target: shard(ys[s], r, b)}, false)
				if err != nil {
					errs[r] = err
					return
				}
				logs[r] = append(logs[r], overlapStep{starts: sc.starts, allDone: rep.crun.allDone, during: rep.crun.during})
				for n, v := range res.Updates {
					params[n] = v
				}
			}
			out[r], profs[r] = params, rep.Profile
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out, logs, profs
}

// TestCompiledBucketsOverlapBackward: with the gradient graph compiled,
// the buckets' all-reduces start while the native step still runs (the
// driver's progress word, rt.Model.RunProgress, and
// lower.Program.OutputReady), as they do in the interpreter
// (TestBucketsOverlapBackward). Two loopback ranks run 2 compiled steps of
// overlapNet on 128×128 images; asserted on order, not on speed: on every
// step some gradients were handed over while kernels were still to run,
// and the first bucket (the last layers' gradients) was issued before the
// last kernel was complete; the ranks agree bit for bit (they issued their
// buckets in the same order).
func TestCompiledBucketsOverlapBackward(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	got, logs, prof := runOverlap(t, 128, 4, 2, true)
	t.Logf("rank 0: %s", prof[0])
	for r, ls := range logs {
		for s, l := range ls {
			if len(l.starts) < 2 {
				t.Fatalf("rank %d step %d: %d buckets all-reduced, want several", r, s, len(l.starts))
			}
			t.Logf("rank %d step %d: %d buckets; %d gradients handed over during the native step; the first bucket issued %v before its last kernel was seen complete",
				r, s, len(l.starts), l.during, l.allDone.Sub(l.starts[0]))
			if l.during == 0 || !l.starts[0].Before(l.allDone) {
				t.Errorf("rank %d step %d: %d gradients handed over during the compiled step, the first bucket issued %v before its end; want some, during backward", r, s, l.during, l.allDone.Sub(l.starts[0]))
			}
		}
	}
	if prof[0].EarlyBytes == 0 {
		t.Errorf("compiled profile: no bytes started during backward: %s", prof[0])
	}
	compareParams(t, "compiled ranks", got[0], got[1], nil, 0)
}

// TestCompiledOverlapMatchesInterpreter: 3 data-parallel steps of
// overlapNet on 32×32 images on 2 loopback ranks, with the compiled
// gradients handed to 4 KB buckets as they become final, land within 1e-4
// relative per tensor of the same steps in the interpreter (the compiled
// kernels' agreement, as in TestReplicasCompiled), and the compiled ranks
// agree bit for bit.
func TestCompiledOverlapMatchesInterpreter(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	want, _, iprof := runOverlap(t, 32, 2, 3, false)
	got, logs, cprof := runOverlap(t, 32, 2, 3, true)
	during := 0
	for _, l := range logs[0] {
		during += l.during
	}
	t.Logf("interpreter, rank 0: %s", iprof[0])
	t.Logf("compiled, rank 0: %s; %d gradients handed over during the native steps", cprof[0], during)
	w := compareParams(t, "compiled", want[0], got[0], nil, 1e-4)
	t.Logf("worst relative difference %.2e", w)
	compareParams(t, "compiled ranks", got[0], got[1], nil, 0)
}
