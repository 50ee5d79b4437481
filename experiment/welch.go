package experiment

import (
	"errors"
	"math"
)

// Welch is the result of Welch's unequal-variances t-test of two samples.
type Welch struct {
	T, DF, P float64 // the statistic, the Welch–Satterthwaite degrees of freedom, the two-sided p-value
	MeanDiff float64 // mean(a) − mean(b)
}

// WelchTTest tests whether samples a and b have equal means without
// assuming equal variances (Welch 1947, "The generalization of 'Student's'
// problem when several different population variances are involved",
// Biometrika 34): t = (ā − b̄)/√(s²a/na + s²b/nb) with sample variances
// s², and ν = (s²a/na + s²b/nb)² / ((s²a/na)²/(na−1) + (s²b/nb)²/(nb−1))
// degrees of freedom (Satterthwaite's approximation). P is the two-sided
// p-value 2·(1 − F_ν(|t|)) of Student's t distribution (StudentTSF). Each
// sample needs at least 2 values, and at least one sample must vary.
func WelchTTest(a, b []float64) (Welch, error) {
	if len(a) < 2 || len(b) < 2 {
		return Welch{}, errors.New("welch t-test: each sample needs at least 2 values")
	}
	sa, sb := stat(a, len(a)), stat(b, len(b))
	va, vb := sa.SD*sa.SD/float64(len(a)), sb.SD*sb.SD/float64(len(b))
	if va+vb == 0 {
		return Welch{}, errors.New("welch t-test: both samples are constant")
	}
	w := Welch{MeanDiff: sa.Mean - sb.Mean}
	w.T = w.MeanDiff / math.Sqrt(va+vb)
	w.DF = (va + vb) * (va + vb) / (va*va/float64(len(a)-1) + vb*vb/float64(len(b)-1))
	w.P = 2 * StudentTSF(math.Abs(w.T), w.DF)
	return w, nil
}

// StudentTSF returns the upper tail P(T > t) of Student's t distribution
// with nu > 0 degrees of freedom, for t ≥ 0, through the regularized
// incomplete beta function: P(T > t) = I_x(ν/2, 1/2)/2 with x = ν/(ν+t²)
// (Abramowitz and Stegun 26.7.1 with 26.5.27; Press et al., Numerical
// Recipes, 3rd ed., §6.14.4).
func StudentTSF(t, nu float64) float64 {
	if t < 0 {
		return 1 - StudentTSF(-t, nu)
	}
	return 0.5 * RegIncBeta(nu/(nu+t*t), nu/2, 0.5)
}

// RegIncBeta is the regularized incomplete beta function I_x(a, b) for
// 0 ≤ x ≤ 1, a, b > 0, evaluated by its continued fraction with the
// modified Lentz method, using the symmetry I_x(a,b) = 1 − I_{1−x}(b,a)
// where the fraction converges slowly (Press et al., Numerical Recipes,
// 3rd ed., §6.4, betai and betacf).
func RegIncBeta(x, a, b float64) float64 {
	switch {
	case x <= 0:
		return 0
	case x >= 1:
		return 1
	}
	la, _ := math.Lgamma(a + b)
	lb, _ := math.Lgamma(a)
	lc, _ := math.Lgamma(b)
	front := math.Exp(la - lb - lc + a*math.Log(x) + b*math.Log1p(-x))
	if x < (a+1)/(a+b+2) {
		return front * betaCF(x, a, b) / a
	}
	return 1 - front*betaCF(1-x, b, a)/b
}

// betaCF evaluates the continued fraction of the incomplete beta function
// (Numerical Recipes §6.4, eq. 6.4.5) by the modified Lentz method.
func betaCF(x, a, b float64) float64 {
	const tiny, eps = 1e-300, 1e-15
	qab, qap, qam := a+b, a+1, a-1
	c, d := 1.0, 1-qab*x/qap
	if math.Abs(d) < tiny {
		d = tiny
	}
	d = 1 / d
	h := d
	for m := 1; m <= 300; m++ {
		fm := float64(m)
		m2 := 2 * fm
		aa := fm * (b - fm) * x / ((qam + m2) * (a + m2))
		d = 1 + aa*d
		if math.Abs(d) < tiny {
			d = tiny
		}
		c = 1 + aa/c
		if math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		h *= d * c
		aa = -(a + fm) * (qab + fm) * x / ((a + m2) * (qap + m2))
		d = 1 + aa*d
		if math.Abs(d) < tiny {
			d = tiny
		}
		c = 1 + aa/c
		if math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		del := d * c
		h *= del
		if math.Abs(del-1) < eps {
			break
		}
	}
	return h
}
