// Package serve is the HTTP server of a built executable (OUT --serve
// ADDR): POST /v1/predict runs the network on a .npy array, a JSON array or
// an image and answers JSON logits or the top-k classes; GET /healthz,
// GET /v1/info and GET /metrics (Prometheus) complete it.
//
// Requests are batched dynamically (as in TensorFlow Serving's and Triton's
// dynamic batchers): one goroutine collects queued requests until their
// samples fill the largest compiled batch or the oldest has waited
// Config.MaxDelay, runs them as one batch (rt.MultiModel pads it to the
// smallest compiled batch that fits) and hands each request its rows.
// Config.NoBatching runs each request on its own instead, for comparison.
//
// Every resource a client controls is bounded: the body size
// (Config.MaxBodyBytes; 413 beyond), the samples per request
// (Config.MaxSamples), image dimensions (runtime/imageprep reads the header
// before decoding), the requests in flight (Config.MaxInFlight; a request
// waits at most Config.QueueWait for a slot, else 429) and, in
// ListenAndServe, the time to read a request and write a response. Errors
// are JSON objects {"error": "..."} with a 4xx status for the client's
// mistakes.
package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	rt "github.com/kiln-dev/kiln/runtime"
)

// Model is what the server runs: rt.MultiModel satisfies it. Run takes
// n*InRow() floats (n samples) and fills n*OutRow().
type Model interface {
	Run(in, out []float32) error
	InRow() int
	OutRow() int
	MaxBatch() int
	Batches() []int
}

// Config configures a Server. Zero values take the defaults listed.
type Config struct {
	Model Model
	// Manifest describes the network: name, input and output shapes
	// (per-sample shapes are Shape[1:]), preprocessing, labels.
	Manifest *rt.Manifest
	// MaxDelay is the longest a request waits for others to join its
	// batch (default 2ms).
	MaxDelay time.Duration
	// NoBatching runs every request on its own.
	NoBatching bool
	// Workers is how many batches may run at once (default 1; the runner
	// passes the model's MaxSessions). While all are busy the batcher
	// keeps collecting, so batches grow under load.
	Workers int
	// MaxBodyBytes bounds a request body (default 64 MiB).
	MaxBodyBytes int64
	// MaxSamples bounds the samples of one request (default 16 × the
	// largest compiled batch).
	MaxSamples int
	// MaxInFlight bounds the requests being decoded, queued or run
	// (default 64); QueueWait is how long a request waits for a slot
	// before it is answered 429 (default 1s).
	MaxInFlight int
	QueueWait   time.Duration
	// Registry receives the metrics (default: a new registry).
	Registry *prometheus.Registry
	// OnBatch, if set, is called with the samples of each run (tests).
	OnBatch func(samples, requests int)
}

// Server serves one model. Create it with New; Close it after the HTTP
// server has shut down.
type Server struct {
	cfg     Config
	man     *rt.Manifest
	sample  []int // per-sample input shape
	outDims []int // per-sample output shape
	slots   chan struct{}
	queue   chan *job
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
	m       metrics
	mux     *http.ServeMux
}

// job is one request's samples waiting for the batcher.
type job struct {
	in   []float32
	n    int
	out  []float32
	err  error
	done chan struct{}
}

type metrics struct {
	requests *prometheus.CounterVec
	latency  prometheus.Histogram
	batch    prometheus.Histogram
	queue    prometheus.Gauge
	inflight prometheus.Gauge
}

// New checks cfg, fills its defaults and starts the batcher.
func New(cfg Config) (*Server, error) {
	if cfg.Model == nil || cfg.Manifest == nil {
		return nil, errors.New("serve: Config.Model and Config.Manifest are required")
	}
	man := cfg.Manifest
	if len(man.Input.Shape) < 1 || len(man.Output.Shape) < 1 {
		return nil, errors.New("serve: the manifest has no input or output shape")
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 2 * time.Millisecond
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 20
	}
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = 16 * cfg.Model.MaxBatch()
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = time.Second
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{
		cfg: cfg, man: man,
		sample:  man.Input.Shape[1:],
		outDims: man.Output.Shape[1:],
		slots:   make(chan struct{}, cfg.MaxInFlight),
		queue:   make(chan *job, cfg.MaxInFlight),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.m = metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_requests_total", Help: "Prediction requests by HTTP status code."}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kiln_request_duration_seconds", Help: "Latency of /v1/predict, from arrival to response.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kiln_batch_samples", Help: "Samples per network run (after dynamic batching, before padding).",
			Buckets: prometheus.LinearBuckets(1, 1, max(1, min(cfg.Model.MaxBatch(), 64)))}),
		queue:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_queue_depth", Help: "Requests waiting for the batcher."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_inflight_requests", Help: "Requests being decoded, queued or run."}),
	}
	for _, c := range []prometheus.Collector{s.m.requests, s.m.latency, s.m.batch, s.m.queue, s.m.inflight} {
		if err := cfg.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("serve: register metrics: %w", err)
		}
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("/v1/predict", s.predict)
	s.mux.HandleFunc("/v1/info", s.info)
	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	if cfg.NoBatching {
		close(s.done)
	} else {
		go s.batcher()
	}
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Close stops the batcher after the queued requests have run. Call it
// after the HTTP server has shut down (no handler running).
func (s *Server) Close() {
	s.once.Do(func() { close(s.quit) })
	<-s.done
}

// ListenAndServe serves s on addr until ctx is cancelled, then shuts down
// gracefully: it stops accepting connections, waits up to drain for the
// requests in flight to be answered, and stops the batcher. ready, if not
// nil, receives the address listened on (useful with port 0).
func ListenAndServe(ctx context.Context, s *Server, addr string, timeout, drain time.Duration, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: timeout,
		ReadTimeout:       timeout,
		WriteTimeout:      timeout,
		IdleTimeout:       4 * timeout,
		MaxHeaderBytes:    64 << 10,
	}
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err = srv.Shutdown(sctx)
	s.Close()
	if err != nil {
		return fmt.Errorf("serve: shutdown: %w", err)
	}
	return nil
}

// batcher runs queued jobs in batches of up to the largest compiled batch
// of samples, waiting at most MaxDelay after the first job of a batch, on
// at most Workers goroutines at once.
func (s *Server) batcher() {
	workers := make(chan struct{}, s.cfg.Workers)
	defer func() {
		for range s.cfg.Workers { // wait for the running batches
			workers <- struct{}{}
		}
		close(s.done)
	}()
	maxB := s.cfg.Model.MaxBatch()
	var carry *job
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-s.queue:
			case <-s.quit:
				// Handlers are gone; run anything left.
				select {
				case first = <-s.queue:
				default:
					return
				}
			}
		}
		s.m.queue.Set(float64(len(s.queue)))
		jobs := []*job{first}
		n := first.n
		timer.Reset(s.cfg.MaxDelay)
	collect:
		for n < maxB {
			select {
			case j := <-s.queue:
				if n+j.n > maxB {
					carry = j
					break collect
				}
				jobs = append(jobs, j)
				n += j.n
			case <-timer.C:
				break collect
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		s.m.queue.Set(float64(len(s.queue)))
		workers <- struct{}{}
		go func() {
			s.runJobs(jobs, n)
			<-workers
		}()
	}
}

// runJobs runs jobs (n samples in all) as one batch and splits the result.
func (s *Server) runJobs(jobs []*job, n int) {
	inRow, outRow := s.cfg.Model.InRow(), s.cfg.Model.OutRow()
	var in, out []float32
	if len(jobs) == 1 {
		in, out = jobs[0].in, jobs[0].out
	} else {
		in = make([]float32, 0, n*inRow)
		for _, j := range jobs {
			in = append(in, j.in...)
		}
		out = make([]float32, n*outRow)
	}
	s.m.batch.Observe(float64(n))
	if s.cfg.OnBatch != nil {
		s.cfg.OnBatch(n, len(jobs))
	}
	err := s.cfg.Model.Run(in, out)
	off := 0
	for _, j := range jobs {
		if len(jobs) > 1 {
			copy(j.out, out[off*outRow:(off+j.n)*outRow])
		}
		off += j.n
		j.err = err
		close(j.done)
	}
}

// run runs n samples: through the batcher, or directly with NoBatching.
func (s *Server) run(ctx context.Context, in []float32, n int) ([]float32, error) {
	out := make([]float32, n*s.cfg.Model.OutRow())
	if s.cfg.NoBatching {
		s.m.batch.Observe(float64(n))
		if s.cfg.OnBatch != nil {
			s.cfg.OnBatch(n, 1)
		}
		return out, s.cfg.Model.Run(in, out)
	}
	j := &job{in: in, n: n, out: out, done: make(chan struct{})}
	select {
	case s.queue <- j:
	case <-s.quit:
		return nil, errShuttingDown
	}
	s.m.queue.Set(float64(len(s.queue)))
	<-j.done // the batcher always finishes a job it took
	return out, j.err
}

var errShuttingDown = errors.New("the server is shutting down")

// httpError is an error with its HTTP status.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &httpError{code, fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// predict is POST /v1/predict.
func (s *Server) predict(w http.ResponseWriter, r *http.Request) {
	t0 := time.Now()
	code := http.StatusOK
	defer func() {
		s.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		s.m.latency.Observe(time.Since(t0).Seconds())
	}()
	fail := func(err error) {
		code = http.StatusInternalServerError
		var he *httpError
		if errors.As(err, &he) {
			code = he.code
		} else if errors.Is(err, errShuttingDown) {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]string{"error": err.Error()})
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(errorf(http.StatusMethodNotAllowed, "%s /v1/predict: use POST", r.Method))
		return
	}
	// Concurrency limit: wait QueueWait at most for a slot.
	wait := time.NewTimer(s.cfg.QueueWait)
	select {
	case s.slots <- struct{}{}:
		wait.Stop()
	case <-wait.C:
		fail(errorf(http.StatusTooManyRequests, "too many requests in flight (%d); retry later", s.cfg.MaxInFlight))
		return
	case <-r.Context().Done():
		wait.Stop()
		fail(errorf(http.StatusServiceUnavailable, "request cancelled while waiting for a slot"))
		return
	}
	s.m.inflight.Inc()
	defer func() {
		<-s.slots
		s.m.inflight.Dec()
	}()
	top := 0
	if q := r.URL.Query().Get("top"); q != "" {
		k, err := strconv.Atoi(q)
		if err != nil || k <= 0 {
			fail(errorf(http.StatusBadRequest, "top=%q: want a positive integer", q))
			return
		}
		top = min(k, s.cfg.Model.OutRow())
	}
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	in, n, err := s.decode(r.Header.Get("Content-Type"), body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = errorf(http.StatusRequestEntityTooLarge, "request body over the limit of %d bytes", s.cfg.MaxBodyBytes)
		}
		fail(err)
		return
	}
	out, err := s.run(r.Context(), in, n)
	if err != nil {
		fail(err)
		return
	}
	outRow := s.cfg.Model.OutRow()
	if top > 0 {
		preds := make([][]prediction, n)
		for i := range n {
			preds[i] = topK(out[i*outRow:(i+1)*outRow], top, s.man.Labels)
		}
		writeJSON(w, code, map[string]any{"model": s.man.Network, "predictions": preds})
		return
	}
	rows := make([][]float32, n)
	for i := range n {
		rows[i] = out[i*outRow : (i+1)*outRow]
	}
	writeJSON(w, code, map[string]any{"model": s.man.Network, "shape": append([]int{n}, s.outDims...), "outputs": jsonFloats(rows)})
}

// jsonFloats replaces non-finite values, which JSON cannot carry, by nil
// (null).
func jsonFloats(rows [][]float32) any {
	finite := true
	for _, r := range rows {
		for _, v := range r {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				finite = false
			}
		}
	}
	if finite {
		return rows
	}
	out := make([][]*float32, len(rows))
	for i, r := range rows {
		out[i] = make([]*float32, len(r))
		for j := range r {
			if v := r[j]; !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) {
				out[i][j] = &r[j]
			}
		}
	}
	return out
}

type prediction struct {
	Index       int     `json:"index"`
	Label       string  `json:"label,omitempty"`
	Probability float64 `json:"probability"`
}

// topK returns the k largest softmax probabilities of logits, best first
// (as the runner's --image --top prints them).
func topK(logits []float32, k int, labels []string) []prediction {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	p := make([]float64, len(logits))
	var sum float64
	for i, v := range logits {
		p[i] = math.Exp(float64(v) - mx)
		sum += p[i]
	}
	idx := make([]int, len(p))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
	var out []prediction
	for _, i := range idx[:min(k, len(idx))] {
		pr := prediction{Index: i, Probability: p[i] / sum}
		if i < len(labels) {
			pr.Label = labels[i]
		}
		out = append(out, pr)
	}
	return out
}

// info is GET /v1/info: what the server runs.
func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	info := map[string]any{
		"network":      s.man.Network,
		"input":        s.sample,
		"output":       s.outDims,
		"batches":      s.cfg.Model.Batches(),
		"batching":     !s.cfg.NoBatching,
		"max_delay_ms": float64(s.cfg.MaxDelay) / 1e6,
		"labels":       len(s.man.Labels),
		"image":        s.man.Preprocess != nil,
	}
	writeJSON(w, http.StatusOK, info)
}
