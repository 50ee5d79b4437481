package data

// The random draws of a training run are counter-based: every draw is a
// hash of (seed, purpose, epoch, position) rather than the next value of a
// stream, so that a run resumed at any step draws exactly what the
// uninterrupted run drew there, and the checkpoint's RNG state is just the
// seed and the position. The hash is splitmix64's finaliser (Steele, Lea and
// Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014;
// Vigna's splitmix64.c), also what ir/interp's dropout masks use.

// splitmix64 is one step of splitmix64: the finaliser of x + golden gamma.
func splitmix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// Hash mixes seed and the counters k into one 64-bit value.
func Hash(seed uint64, k ...uint64) uint64 {
	h := splitmix64(seed)
	for _, v := range k {
		h = splitmix64(h ^ v)
	}
	return h
}

// Purposes of the draws, so that they are independent of each other.
const (
	purposeShuffle = 1
	purposeAugment = 2
)

// Order returns the order in which epoch epoch visits n items: a
// Fisher–Yates shuffle (Knuth, TAOCP vol. 2, §3.4.2, Algorithm P) driven by
// a splitmix64 stream seeded with Hash(seed, shuffle, epoch). The same seed
// and epoch always give the same order.
func Order(seed uint64, epoch, n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	s := Hash(seed, purposeShuffle, uint64(epoch))
	for i := n - 1; i > 0; i-- {
		s = splitmix64(s)
		j := int(s % uint64(i+1)) // bias < (i+1)/2^64
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// Augment is the training augmentation: a random crop of the image's own
// size from the image padded by Pad pixels on each side with the dataset's
// fill value (torchvision's RandomCrop(size, padding=Pad)), then a
// horizontal flip with probability 1/2 when Flip is set
// (RandomHorizontalFlip). The zero value is no augmentation.
type Augment struct {
	Pad  int
	Flip bool
}

// Apply augments the CHW image src of shape c×h×w into dst. The offsets
// and the flip are drawn from Hash(seed, augment, epoch, pos), pos being the
// item's position in the epoch, so they are a function of the run's seed and
// the step alone.
func (a Augment) Apply(seed uint64, epoch, pos int, c, h, w int, fill func(int) float32, src, dst []float32) {
	if a.Pad <= 0 && !a.Flip {
		copy(dst, src)
		return
	}
	r := Hash(seed, purposeAugment, uint64(epoch), uint64(pos))
	span := uint64(2*a.Pad + 1)
	dy, dx := 0, 0 // the crop's top-left corner in padded coordinates, minus Pad
	if a.Pad > 0 {
		dy = int(r%span) - a.Pad
		dx = int((r>>20)%span) - a.Pad
	}
	flip := a.Flip && (r>>63) == 1
	for ch := range c {
		f := fill(ch)
		for y := range h {
			sy := y + dy
			for x := range w {
				sx := x + dx
				if flip {
					sx = w - 1 - x + dx
				}
				v := f
				if sy >= 0 && sy < h && sx >= 0 && sx < w {
					v = src[(ch*h+sy)*w+sx]
				}
				dst[(ch*h+y)*w+x] = v
			}
		}
	}
}
