package experiment

import (
	"math"
	"testing"
)

// TestStudentTSF checks the t distribution's tail against closed forms
// (ν = 1: Cauchy, 1/2 − atan(t)/π; ν = 2: (1 − t/√(2+t²))/2) and against
// numerical integration of the density (Python, midpoint rule on 2·10⁵
// points after x = t + u/(1−u)).
func TestStudentTSF(t *testing.T) {
	for _, c := range []struct {
		t, nu, want, tol float64
	}{
		{0, 5, 0.5, 1e-14},
		{1, 1, 0.5 - math.Atan(1)/math.Pi, 1e-12},
		{12.706, 1, 0.5 - math.Atan(12.706)/math.Pi, 1e-12},
		{4.303, 2, (1 - 4.303/math.Sqrt(2+4.303*4.303)) / 2, 1e-12},
		{0.5, 2, (1 - 0.5/math.Sqrt(2.25)) / 2, 1e-12},
		{2.5, 7.3, 0.019825117332815168, 1e-8},
		{0.3, 3.7, 0.39013374356633146, 1e-8},
		{-0.3, 3.7, 1 - 0.39013374356633146, 1e-8},
	} {
		if got := StudentTSF(c.t, c.nu); math.Abs(got-c.want) > c.tol {
			t.Errorf("StudentTSF(%v, %v) = %.15g, want %.15g", c.t, c.nu, got, c.want)
		}
	}
}

// TestWelchTTest checks the statistic, the degrees of freedom and the
// two-sided p-value against Wikipedia's "Welch's t-test" example 1
// (t = −2.46, ν = 24.99, p = 0.021) and a three-seed case, with reference
// values from the formulas and a numerically integrated density in Python.
func TestWelchTTest(t *testing.T) {
	for _, c := range []struct {
		name      string
		a, b      []float64
		t, df, p  float64
		wantError bool
	}{
		{name: "wikipedia example 1",
			a: []float64{27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4},
			b: []float64{27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4},
			t: -2.45535639828601, df: 24.98852929023142, p: 0.021378001462863217},
		{name: "three seeds", a: []float64{91.2, 91.8, 92.5}, b: []float64{92.1, 92.9, 93.0},
			t: -1.767766952966385, df: 3.728213253798137, p: 0.15703814797227741},
		{name: "one value", a: []float64{91}, b: []float64{92, 93}, wantError: true},
		{name: "constant", a: []float64{91, 91}, b: []float64{92, 92}, wantError: true},
	} {
		w, err := WelchTTest(c.a, c.b)
		if c.wantError {
			if err == nil {
				t.Errorf("%s: no error", c.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if math.Abs(w.T-c.t) > 1e-12 || math.Abs(w.DF-c.df) > 1e-9 || math.Abs(w.P-c.p) > 1e-7 {
			t.Errorf("%s: t %.15g df %.15g p %.15g, want %.15g %.15g %.15g", c.name, w.T, w.DF, w.P, c.t, c.df, c.p)
		}
	}
}
