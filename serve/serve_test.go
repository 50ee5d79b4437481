package serve

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// fakeModel computes out[j] = (j+1) × sum(sample) for each sample of
// 3×2×2, on compiled batches 1 and 4. gate, if set, blocks each Run until
// it can receive.
type fakeModel struct {
	gate    chan struct{}
	started chan struct{} // if set, receives when a Run starts
	mu      sync.Mutex
	runs    []int // samples per Run
}

func (f *fakeModel) InRow() int     { return 12 }
func (f *fakeModel) OutRow() int    { return 3 }
func (f *fakeModel) MaxBatch() int  { return 4 }
func (f *fakeModel) Batches() []int { return []int{1, 4} }
func (f *fakeModel) Run(in, out []float32) error {
	if f.started != nil {
		f.started <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	n := len(in) / 12
	f.mu.Lock()
	f.runs = append(f.runs, n)
	f.mu.Unlock()
	for i := range n {
		var s float32
		for _, v := range in[i*12 : (i+1)*12] {
			s += v
		}
		for j := range 3 {
			out[i*3+j] = float32(j+1) * s
		}
	}
	return nil
}

func testManifest() *rt.Manifest {
	return &rt.Manifest{
		Network:    "fake",
		Batch:      4,
		Input:      rt.TensorInfo{Name: "image", Shape: []int{4, 3, 2, 2}},
		Output:     rt.TensorInfo{Name: "logits", Shape: []int{4, 3}},
		Preprocess: &rt.Preprocess{Size: 2, CropPct: 0.875, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}},
		Labels:     []string{"cat", "dog", "emu"},
	}
}

func newServer(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	if cfg.Model == nil {
		cfg.Model = &fakeModel{}
	}
	cfg.Manifest = testManifest()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { ts.Close(); s.Close() })
	return s, ts
}

func npyBody(t *testing.T, shape []int, v float32) []byte {
	t.Helper()
	x := tensor.New(shape...)
	for i := range x.Data {
		x.Data[i] = v
	}
	var b bytes.Buffer
	if err := tensor.WriteNPY(&b, x); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func pngBody(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// hugePNG is a valid PNG header declaring a w×h image (no pixel data).
func hugePNG(w, h uint32) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	chunk := make([]byte, 13)
	binary.BigEndian.PutUint32(chunk, w)
	binary.BigEndian.PutUint32(chunk[4:], h)
	chunk[8], chunk[9] = 8, 0
	b = binary.BigEndian.AppendUint32(b, 13)
	typed := append([]byte("IHDR"), chunk...)
	b = append(b, typed...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(typed))
}

type response struct {
	code int
	body map[string]any
	raw  string
}

func post(t *testing.T, url, ctype string, body []byte) response {
	t.Helper()
	resp, err := http.Post(url, ctype, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{code: resp.StatusCode, raw: string(raw)}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("response %d is not JSON: %q", resp.StatusCode, raw)
	}
	return r
}

// TestPredictFormats: .npy (one sample and a batch), nested JSON, flat JSON
// with a shape and a PNG image give the model's outputs; top=K gives the
// classes with labels.
func TestPredictFormats(t *testing.T) {
	_, ts := newServer(t, Config{MaxDelay: time.Millisecond})
	u := ts.URL + "/v1/predict"
	nested := `{"inputs": [[[1,1],[1,1]],[[1,1],[1,1]],[[1,1],[1,1]]]}`
	flat := `{"inputs": [` + strings.TrimSuffix(strings.Repeat("0.5,", 24), ",") + `], "shape": [2,3,2,2]}`
	for _, c := range []struct {
		name, ctype string
		body        []byte
		want        string
	}{
		{"npy one sample", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1), `"outputs":[[12,24,36]]`},
		{"npy batch of 3", "application/x-npy", npyBody(t, []int{3, 3, 2, 2}, 0.5), `"outputs":[[6,12,18],[6,12,18],[6,12,18]]`},
		{"npy batch of 6, chunked by the model", "application/x-npy", npyBody(t, []int{6, 3, 2, 2}, 1), `"shape":[6,3]`},
		{"json nested", "application/json", []byte(nested), `"outputs":[[12,24,36]]`},
		{"json flat with shape", "application/json; charset=utf-8", []byte(flat), `"outputs":[[6,12,18],[6,12,18]]`},
		{"png", "image/png", pngBody(t, 5, 4), `"shape":[1,3]`},
	} {
		r := post(t, u, c.ctype, c.body)
		if r.code != 200 || !strings.Contains(r.raw, c.want) {
			t.Errorf("%s: %d %s, want %s", c.name, r.code, r.raw, c.want)
		}
	}
	r := post(t, u+"?top=2", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1))
	if r.code != 200 || !strings.Contains(r.raw, `"predictions":[[{"index":2,"label":"emu","probability":0.99999`) || !strings.Contains(r.raw, `"label":"dog"`) {
		t.Errorf("top=2: %d %s", r.code, r.raw)
	}
}

// TestPredictBadInput: every client mistake is a 4xx with a JSON error
// saying what was expected.
func TestPredictBadInput(t *testing.T) {
	_, ts := newServer(t, Config{MaxBodyBytes: 4096})
	u := ts.URL + "/v1/predict"
	for _, c := range []struct {
		name, ctype string
		body        []byte
		code        int
		want        string
	}{
		{"wrong shape", "application/x-npy", npyBody(t, []int{3, 2, 3}, 1), 400, "input shape 3x2x3: want 3x2x2 (one sample) or N×3x2x2"},
		{"not npy", "application/x-npy", []byte("hello"), 400, "npy"},
		{"bad json", "application/json", []byte(`{"inputs": [1,2`), 400, "JSON body"},
		{"unknown json field", "application/json", []byte(`{"input": [1]}`), 400, "unknown field"},
		{"ragged json", "application/json", []byte(`{"inputs": [[1,2],[3]]}`), 400, "ragged array"},
		{"string in json", "application/json", []byte(`{"inputs": [["a"]]}`), 400, "is not a number"},
		{"shape mismatch", "application/json", []byte(`{"inputs": [1,2,3], "shape": [2,2]}`), 400, "holds 4 values, inputs has 3"},
		{"content type", "text/plain", []byte("1"), 415, "send application/x-npy, application/json, image/jpeg or image/png"},
		{"broken image", "image/jpeg", []byte("\xff\xd8\xff\xe0 nope"), 400, "cannot decode image"},
		{"huge image header", "image/png", hugePNG(1_000_000, 1), 400, "a side over the limit"},
		{"oversize", "application/x-npy", npyBody(t, []int{100, 3, 2, 2}, 1), 413, "request body over the limit of 4096 bytes"},
		{"oversize json", "application/json", []byte(`{"inputs": [` + strings.Repeat("1,", 3000) + `1]}`), 413, "over the limit"},
		{"too many samples", "application/json", []byte(`{"inputs": [` + strings.TrimSuffix(strings.Repeat("0,", 12*65), ",") + `], "shape": [65,3,2,2]}`), 413, "65 samples in one request: at most 64"},
	} {
		r := post(t, u, c.ctype, c.body)
		if r.code != c.code || !strings.Contains(fmt.Sprint(r.body["error"]), c.want) {
			t.Errorf("%s: %d %s, want %d and %q", c.name, r.code, r.raw, c.code, c.want)
		}
	}
	r := post(t, u+"?top=x", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1))
	if r.code != 400 || !strings.Contains(r.raw, "top=") {
		t.Errorf("top=x: %d %s", r.code, r.raw)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET /v1/predict: %d", resp.StatusCode)
	}
}

// TestBatchingMerges: four concurrent one-sample requests are run as one
// batch of four (the batcher waits for them: MaxDelay is long), each gets
// its own row back, and the metrics count them; without batching each
// request runs alone.
func TestBatchingMerges(t *testing.T) {
	for _, noBatching := range []bool{false, true} {
		fm := &fakeModel{}
		var mu sync.Mutex
		var batches [][2]int
		_, ts := newServer(t, Config{Model: fm, MaxDelay: 10 * time.Second, NoBatching: noBatching, OnBatch: func(n, reqs int) {
			mu.Lock()
			batches = append(batches, [2]int{n, reqs})
			mu.Unlock()
		}})
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := post(t, ts.URL+"/v1/predict", "application/x-npy", npyBody(t, []int{3, 2, 2}, float32(i)))
				want := fmt.Sprintf(`"outputs":[[%d,%d,%d]]`, 12*i, 24*i, 36*i)
				if r.code != 200 || !strings.Contains(r.raw, want) {
					t.Errorf("request %d: %d %s, want %s", i, r.code, r.raw, want)
				}
			}()
		}
		wg.Wait()
		want := [][2]int{{4, 4}}
		if noBatching {
			want = [][2]int{{1, 1}, {1, 1}, {1, 1}, {1, 1}}
		}
		if fmt.Sprint(batches) != fmt.Sprint(want) {
			t.Errorf("noBatching=%v: batches (samples, requests) %v, want %v", noBatching, batches, want)
		}
		resp, err := http.Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantSum := "kiln_batch_samples_sum 4\nkiln_batch_samples_count 1\n"
		if noBatching {
			wantSum = "kiln_batch_samples_sum 4\nkiln_batch_samples_count 4\n"
		}
		for _, w := range []string{`kiln_requests_total{code="200"} 4`, wantSum, "kiln_request_duration_seconds_count 4", "kiln_queue_depth 0", "kiln_inflight_requests 0"} {
			if !strings.Contains(string(m), w) {
				t.Errorf("noBatching=%v: /metrics lacks %q:\n%s", noBatching, w, m)
			}
		}
	}
}

// TestConcurrencyLimit: with one slot taken by a running request, the
// next waits QueueWait and is answered 429.
func TestConcurrencyLimit(t *testing.T) {
	fm := &fakeModel{gate: make(chan struct{})}
	_, ts := newServer(t, Config{Model: fm, MaxInFlight: 1, QueueWait: 50 * time.Millisecond, MaxDelay: time.Millisecond})
	first := make(chan response)
	go func() { first <- post(t, ts.URL+"/v1/predict", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1)) }()
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := http.Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(m), "kiln_inflight_requests 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first request never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := post(t, ts.URL+"/v1/predict", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1))
	if r.code != 429 || !strings.Contains(r.raw, "too many requests in flight (1)") {
		t.Errorf("second request: %d %s", r.code, r.raw)
	}
	fm.gate <- struct{}{}
	if r := <-first; r.code != 200 {
		t.Errorf("first request: %d %s", r.code, r.raw)
	}
	resp, err := http.Get(ts.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestShutdownDrains: cancelling ListenAndServe's context while a request
// runs lets that request finish with 200, then returns nil; new
// connections are refused.
func TestShutdownDrains(t *testing.T) {
	fm := &fakeModel{gate: make(chan struct{}), started: make(chan struct{}, 1)}
	s, err := New(Config{Model: fm, Manifest: testManifest(), MaxDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- ListenAndServe(ctx, s, "127.0.0.1:0", 5*time.Second, 5*time.Second, func(a net.Addr) { addrc <- a })
	}()
	url := "http://" + (<-addrc).String()
	got := make(chan response, 1)
	go func() { got <- post(t, url+"/v1/predict", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1)) }()
	<-fm.started // the request is in the model
	cancel()
	time.Sleep(50 * time.Millisecond) // Shutdown is now waiting for it
	select {
	case err := <-errc:
		t.Fatalf("ListenAndServe returned with a request in flight: %v", err)
	default:
	}
	fm.gate <- struct{}{}
	if r := <-got; r.code != 200 || !strings.Contains(r.raw, `[[12,24,36]]`) {
		t.Errorf("in-flight request: %d %s", r.code, r.raw)
	}
	if err := <-errc; err != nil {
		t.Errorf("ListenAndServe: %v", err)
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Error("the server still accepts connections after shutdown")
	}
}

// TestWorkers: with Workers 2, a second batch starts while the first is
// still running (the model's gate holds both).
func TestWorkers(t *testing.T) {
	fm := &fakeModel{gate: make(chan struct{}), started: make(chan struct{}, 2)}
	_, ts := newServer(t, Config{Model: fm, Workers: 2, MaxDelay: time.Millisecond})
	got := make(chan response, 2)
	for range 2 {
		go func() { got <- post(t, ts.URL+"/v1/predict", "application/x-npy", npyBody(t, []int{3, 2, 2}, 1)) }()
		select {
		case <-fm.started:
		case <-time.After(10 * time.Second):
			t.Fatal("a batch did not start while the other ran")
		}
	}
	fm.gate <- struct{}{}
	fm.gate <- struct{}{}
	for range 2 {
		if r := <-got; r.code != 200 {
			t.Errorf("%d %s", r.code, r.raw)
		}
	}
}
