package rt

// HostISAs returns the instruction sets this CPU can run, best first: the
// order in which Open picks one when no ISA is forced (["avx512", "avx2"] on
// a CPU with AVX-512, ["neon"] on arm64). kiln bench --peak measures the FMA
// peak of each.
func HostISAs() []string {
	c := hostCPU()
	var out []string
	for _, isa := range knownISAs {
		if c.lacks(isa, tableFeatures(isa)) == "" {
			out = append(out, isa)
		}
	}
	return out
}
