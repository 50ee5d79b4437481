package experiment

import (
	"fmt"
	"hash/fnv"
	"math"
	"strings"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
)

// initPurpose separates InitWeights' draws from the trainer's (data.Hash
// purposes 1..3).
const initPurpose = 101

// InitWeights returns seeded initial parameters and BatchNorm buffers for
// g in PyTorch's default initialisation (torch.nn.Conv2d and nn.Linear
// reset_parameters: kaiming_uniform_ with a = √5, i.e. weights uniform in
// ±1/√fan_in, and biases uniform in ±1/√fan_in with the weight's fan_in;
// nn.BatchNorm2d: weight 1, bias 0, running mean 0, running variance 1).
// A BatchNorm is recognised by its running_mean sibling. Element i of
// tensor "name" is drawn from data.Hash(seed, initPurpose, fnv64(name), i),
// so the values depend only on the seed and the names, not on the order of
// the parameters.
func InitWeights(g *ir.Graph, seed uint64) (map[string]*tensor.Tensor, error) {
	params := g.Params()
	shapes := map[string][]int{}
	for _, p := range params {
		shapes[p.Name] = p.Type.Shape
	}
	out := make(map[string]*tensor.Tensor, len(params))
	for _, p := range params {
		name, shape := p.Name, p.Type.Shape
		t := tensor.New(shape...)
		prefix, leaf, _ := cutLast(name)
		_, isBN := shapes[prefix+".running_mean"]
		switch {
		case isBN && (leaf == "weight" || leaf == "running_var"):
			for i := range t.Data {
				t.Data[i] = 1
			}
		case isBN: // bias, running_mean
		case len(shape) >= 2: // conv or linear weight
			uniform(t, seed, name, 1/math.Sqrt(float64(fanIn(shape))))
		case leaf == "bias":
			ws, ok := shapes[prefix+".weight"]
			if !ok || len(ws) < 2 {
				return nil, fmt.Errorf("initial weights: %s: no weight %s.weight to take the fan-in from", name, prefix)
			}
			uniform(t, seed, name, 1/math.Sqrt(float64(fanIn(ws))))
		default:
			return nil, fmt.Errorf("initial weights: %s %v: unknown kind of parameter", name, shape)
		}
		out[name] = t
	}
	return out, nil
}

func cutLast(name string) (prefix, leaf string, ok bool) {
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return "", name, false
	}
	return name[:i], name[i+1:], true
}

// fanIn is the product of all dimensions but the first (O, I, kh, kw or
// O, I).
func fanIn(shape []int) int {
	n := 1
	for _, d := range shape[1:] {
		n *= d
	}
	return n
}

func uniform(t *tensor.Tensor, seed uint64, name string, bound float64) {
	h := fnv.New64a()
	h.Write([]byte(name))
	k := h.Sum64()
	for i := range t.Data {
		u := float64(data.Hash(seed, initPurpose, k, uint64(i))>>11) / (1 << 53)
		t.Data[i] = float32((2*u - 1) * bound)
	}
}
