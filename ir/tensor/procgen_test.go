package tensor

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestGeneratorVectors(t *testing.T) {
	var gv struct {
		G       float64 `json:"g"`
		Vectors []struct {
			Name      string  `json:"name"`
			Index     uint64  `json:"index"`
			Shape     []int   `json:"shape"`
			Kind      string  `json:"kind"`
			FNV       string  `json:"fnv1a64"`
			SplitMix  string  `json:"splitmix64"`
			U         float64 `json:"u"`
			ValueBits string  `json:"value_f64_bits"`
			Tie       bool    `json:"f32_rounding_tie"`
			F32Bits   string  `json:"f32_bits"`
			Value     float64 `json:"value"`
			FanIn     *int    `json:"fan_in"`
			ScaleBits *string `json:"scale_f64_bits"`
		} `json:"vectors"`
	}
	loadJSON(t, filepath.Join(fixtureDir(t), "generator_vectors.json"), &gv)
	if len(gv.Vectors) != 23 {
		t.Fatalf("generator_vectors.json has %d vectors, want 23", len(gv.Vectors))
	}
	if gv.G != math.Sqrt2 {
		t.Errorf("g = %v, want math.Sqrt2", gv.G)
	}
	ties := 0
	for i, v := range gv.Vectors {
		t.Run(fmt.Sprintf("%d_%s_%d", i, v.Name, v.Index), func(t *testing.T) {
			h := fnv1a64(v.Name)
			if want := parseHex(t, v.FNV); h != want {
				t.Errorf("fnv1a64 = %#x, want %#x", h, want)
			}
			if got, want := splitmix64(h^v.Index), parseHex(t, v.SplitMix); got != want {
				t.Errorf("splitmix64 = %#x, want %#x", got, want)
			}
			if got := u64(h, v.Index); got != v.U {
				t.Errorf("u = %v, want %v", got, v.U)
			}
			kind, err := Kind(v.Name, len(v.Shape))
			if err != nil || kind != v.Kind {
				t.Errorf("Kind = %q, %v; want %q", kind, err, v.Kind)
			}
			value, scale, err := generator(v.Name, v.Shape)
			if err != nil {
				t.Fatal(err)
			}
			if v.ScaleBits != nil {
				if got, want := math.Float64bits(scale), parseHex(t, *v.ScaleBits); got != want {
					t.Errorf("scale bits = %#x, want %#x", got, want)
				}
			}
			if v.FanIn != nil && *v.FanIn != v.Shape[1]*numelInts(v.Shape[2:]) {
				t.Errorf("fan_in in file %d disagrees with shape %v", *v.FanIn, v.Shape)
			}
			f64 := value(v.Index)
			if got, want := math.Float64bits(f64), parseHex(t, v.ValueBits); got != want {
				t.Errorf("float64 value bits = %#x, want %#x", got, want)
			}
			if tie := isF32Tie(f64); tie != v.Tie {
				t.Errorf("float64 value %v: halfway between two float32s = %v, file says %v", f64, tie, v.Tie)
			}
			if v.Tie {
				ties++
				if math.Float32bits(float32(f64))&1 != 0 {
					t.Errorf("tie %v did not round to even", f64)
				}
			}
			g, err := Generate(v.Name, v.Shape)
			if err != nil {
				t.Fatal(err)
			}
			got := math.Float32bits(g.Data[v.Index])
			if want := uint32(parseHex(t, v.F32Bits)); got != want {
				t.Errorf("Generate(%q, %v)[%d] = %#08x, want %#08x", v.Name, v.Shape, v.Index, got, want)
			}
			if float64(g.Data[v.Index]) != v.Value {
				t.Errorf("value %v, want %v", g.Data[v.Index], v.Value)
			}
		})
	}
	if ties == 0 {
		t.Error("no rounding-tie vectors found")
	}
}

// isF32Tie reports whether x lies exactly halfway between two float32s.
func isF32Tie(x float64) bool {
	f := float32(x)
	if float64(f) == x {
		return false
	}
	other := math.Nextafter32(f, float32(math.Inf(-1)))
	if float64(f) < x {
		other = math.Nextafter32(f, float32(math.Inf(1)))
	}
	return math.Abs(x-float64(f)) == math.Abs(float64(other)-x)
}

func numelInts(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

func TestKind(t *testing.T) {
	tests := []struct {
		name    string
		rank    int
		want    string
		wantErr string
	}{
		{"input", 4, KindInput, ""},
		{"input", 2, KindInput, ""},
		{"features.0.conv.weight", 4, KindConvWeight, ""},
		{"last_linear.weight", 2, KindLinearWeight, ""},
		{"features.0.bn.weight", 1, KindBNWeight, ""},
		{"weight", 1, KindBNWeight, ""},
		{"conv2d.bias", 1, KindBias, ""},
		{"features.0.bn.running_mean", 1, KindBNRunningMean, ""},
		{"features.0.bn.running_var", 1, KindBNRunningVar, ""},
		{"features.0.conv.weight", 3, "", "rank 3"},
		{"features.0.conv.weight", 0, "", "rank 0"},
		{"features.0.bn.num_batches_tracked", 0, "", "num_batches_tracked"},
		{"features.0.bn.gamma", 1, "", `unknown tensor kind "gamma"`},
		{"x.input", 4, "", `unknown tensor kind "input"`},
		{"", 1, "", "unknown tensor kind"},
		{"features.0.conv.weight.", 4, "", "unknown tensor kind"},
	}
	for _, tc := range tests {
		got, err := Kind(tc.name, tc.rank)
		if tc.wantErr != "" {
			wantErrContains(t, err, tc.wantErr)
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Kind(%q, %d) = %q, %v; want %q", tc.name, tc.rank, got, err, tc.want)
		}
	}
}

func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name    string
		shape   []int
		wantErr string
	}{
		{"foo.gamma", []int{3}, "unknown tensor kind"},
		{"foo.weight", []int{3, 3, 3}, "rank 3"},
		{"foo.bias", []int{-1}, "negative dimension"},
		{"input", []int{math.MaxInt, 3}, "too many elements"},
	}
	for _, tc := range tests {
		_, err := Generate(tc.name, tc.shape)
		wantErrContains(t, err, tc.wantErr)
	}
	// Empty tensors are fine, including a zero fan_in.
	for _, shape := range [][]int{{0, 3, 3, 3}, {8, 0, 3, 3}, {0, 5}} {
		g, err := Generate("x.weight", shape)
		if err != nil || len(g.Data) != 0 {
			t.Errorf("Generate(x.weight, %v) = %v, %v; want an empty tensor", shape, g, err)
		}
	}
}

// TestGenerateMatchesTensorsJSON regenerates every tensor listed in every
// tensors.json of the fixtures and compares kind, fan_in, first values and
// sha256: all 2,262 tensors (124,251,408 values), which takes about 1.2 s on
// 2 cores, so the whole networks run even with -short.
func TestGenerateMatchesTensorsJSON(t *testing.T) {
	dir := fixtureDir(t)
	sets := []string{}
	for _, tag := range blockDirs(t) {
		sets = append(sets, filepath.Join("blocks", tag))
	}
	sets = append(sets, "inception_v4", "inception_resnet_v2")
	type job struct {
		set   string
		name  string
		shape []int
		kind  string
		sha   string
		first []string
		fanIn *int
	}
	var jobs []job
	for _, set := range sets {
		var tj tensorsJSON
		loadJSON(t, filepath.Join(dir, set, "tensors.json"), &tj)
		if len(tj.Tensors) == 0 {
			t.Errorf("%s/tensors.json lists no tensors", set)
		}
		for _, e := range tj.Tensors {
			jobs = append(jobs, job{set, e.Name, e.Shape, e.Kind, e.SHA256, e.FirstBits, e.FanIn})
		}
	}
	// Largest first, for better load balance.
	sort.SliceStable(jobs, func(a, b int) bool { return numelInts(jobs[a].shape) > numelInts(jobs[b].shape) })
	start := time.Now()
	ch := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	values := 0
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				where := j.set + ": " + j.name
				kind, err := Kind(j.name, len(j.shape))
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				// tensors.json marks BN biases and all other biases "bias";
				// an "input" entry never appears there.
				if kind != j.kind {
					t.Errorf("%s: Kind = %q, tensors.json says %q", where, kind, j.kind)
				}
				if j.fanIn != nil && *j.fanIn != numelInts(j.shape[1:]) {
					t.Errorf("%s: fan_in %d does not match shape %v", where, *j.fanIn, j.shape)
				}
				g, err := Generate(j.name, j.shape)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				for i, b := range j.first {
					if i < len(g.Data) && math.Float32bits(g.Data[i]) != uint32(parseHex(t, b)) {
						t.Errorf("%s: value %d = %#08x, want %s", where, i, math.Float32bits(g.Data[i]), b)
					}
				}
				if got := sha256F32LE(g.Data); got != j.sha {
					t.Errorf("%s %s: sha256 %s, want %s", where, ShapeString(j.shape), got, j.sha)
				}
				mu.Lock()
				values += len(g.Data)
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	t.Logf("regenerated %d tensors (%d values) from %d sets in %v", len(jobs), values, len(sets), time.Since(start))
	if len(jobs) != 2262 || values != 124251408 {
		t.Errorf("checked %d tensors with %d values; the README lists 2,262 tensors with 124,251,408 values", len(jobs), values)
	}
}

// TestInputsMatchGenerator checks that every input.npy in the fixtures is
// Generate("input", shape), bit for bit.
func TestInputsMatchGenerator(t *testing.T) {
	dir := fixtureDir(t)
	var sets []string
	for _, tag := range blockDirs(t) {
		sets = append(sets, filepath.Join("blocks", tag))
	}
	sets = append(sets, "inception_v4", "inception_resnet_v2")
	for _, set := range sets {
		in, err := ReadNPYFile(filepath.Join(dir, set, "input.npy"))
		if err != nil {
			t.Error(err)
			continue
		}
		g, err := Generate("input", in.Shape)
		if err != nil {
			t.Fatal(err)
		}
		requireSameTensor(t, set+"/input.npy", in, g)
	}
}

// TestShippedWeightsMatchGenerator checks that every shipped
// weights.safetensors holds exactly the tensors of its tensors.json, equal to
// the generator bit for bit, in sorted order.
func TestShippedWeightsMatchGenerator(t *testing.T) {
	dir := fixtureDir(t)
	shipped := 0
	for _, tag := range blockDirs(t) {
		p := filepath.Join(dir, "blocks", tag, "weights.safetensors")
		if _, err := os.Stat(p); err != nil {
			continue
		}
		shipped++
		f, err := ReadSafetensorsFile(p)
		if err != nil {
			t.Error(err)
			continue
		}
		var tj tensorsJSON
		loadJSON(t, filepath.Join(dir, "blocks", tag, "tensors.json"), &tj)
		var want []Spec
		for _, e := range tj.Tensors {
			want = append(want, Spec{Name: e.Name, Shape: e.Shape})
		}
		if err := CheckWeights(p, want, f.Tensors); err != nil {
			t.Error(err)
		}
		for _, name := range f.Names {
			g, err := Generate(name, f.Tensors[name].Shape)
			if err != nil {
				t.Errorf("%s: %v", tag, err)
				continue
			}
			requireSameTensor(t, tag+": "+name, f.Tensors[name], g)
		}
		if f.Metadata["block"] != tag {
			t.Errorf("%s: metadata block = %q", tag, f.Metadata["block"])
		}
	}
	if shipped != 6 {
		t.Errorf("found %d weights.safetensors, the README lists 6", shipped)
	}
}

func BenchmarkGenerateConv(b *testing.B) {
	shape := []int{384, 384, 3, 3}
	b.SetBytes(int64(4 * numelInts(shape)))
	for b.Loop() {
		if _, err := Generate("features.0.conv.weight", shape); err != nil {
			b.Fatal(err)
		}
	}
}
