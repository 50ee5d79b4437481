package trainer

import rt "github.com/kiln-dev/kiln/runtime"

// Model returns the loaded native step model (nil before the first Step and
// after Close), for benchmarks that read its manifest (arena size, kernels)
// or time it with Model.Profile. Running it advances the training state as
// Step does; callers must not Close it.
func (e *Compiled) Model() *rt.Model { return e.m }
