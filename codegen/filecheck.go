package codegen

import (
	"fmt"
	"regexp"
	"strings"
)

// Check matches text against FileCheck-style patterns, a subset of LLVM's
// FileCheck (https://llvm.org/docs/CommandGuide/FileCheck.html) for tests of
// generated IR and assembly. Each line of patterns holding a directive is
// one check; other lines are ignored:
//
//	CHECK: p        p matches at or after the end of the previous match
//	CHECK-NEXT: p   p matches on the line right after the previous match's line
//	CHECK-SAME: p   p matches on the previous match's line, after it
//	CHECK-NOT: p    p does not match between the previous match and the next
//	                positive match (or the end of the region)
//	CHECK-LABEL: p  p matches a line; labels are found first, in order, and
//	                split the input into regions that the checks between two
//	                labels are confined to
//	CHECK-EMPTY:    the line after the previous match is empty
//
// A pattern is literal text with {{regex}} segments (Go regexp syntax);
// runs of spaces and tabs in the literal text match any non-empty run of
// horizontal whitespace, and leading and trailing whitespace is ignored.
// Matches never span lines. Not supported: [[VAR]] captures, CHECK-DAG,
// CHECK-COUNT, custom prefixes. The error names the failing directive and
// shows the input around the place it looked.
func Check(text, patterns string) error {
	checks, err := parseChecks(patterns)
	if err != nil {
		return err
	}
	lines := strings.Split(text, "\n")
	// Labels first: they bound the regions.
	var labelLines []int
	pos := 0
	for _, c := range checks {
		if c.kind != "LABEL" {
			continue
		}
		found := -1
		for i := pos; i < len(lines); i++ {
			if c.re.MatchString(lines[i]) {
				found = i
				break
			}
		}
		if found < 0 {
			return c.fail("no match", lines, pos)
		}
		labelLines = append(labelLines, found)
		pos = found + 1
	}
	// Walk the checks; cur is the position just after the previous match.
	cur := position{line: 0, col: 0}
	var pending []check // CHECK-NOT since the last positive match
	li := 0
	label := func(k int) int {
		if k < len(labelLines) {
			return labelLines[k]
		}
		return len(lines)
	}
	regionEnd := label(0)
	for _, c := range checks {
		switch c.kind {
		case "LABEL":
			// The region before this label must be clean of pending NOTs.
			if err := checkNots(pending, lines, cur, position{line: labelLines[li], col: 0}); err != nil {
				return err
			}
			pending = nil
			m := c.re.FindStringIndex(lines[labelLines[li]])
			cur = position{line: labelLines[li], col: m[1]}
			li++
			regionEnd = label(li)
		case "NOT":
			pending = append(pending, c)
		case "", "NEXT", "SAME", "EMPTY":
			var at position
			var ok bool
			switch c.kind {
			case "":
				at, ok = search(c.re, lines, cur, regionEnd)
			case "NEXT", "EMPTY":
				if cur.line+1 < regionEnd {
					l := lines[cur.line+1]
					if c.kind == "EMPTY" {
						ok = strings.TrimSpace(l) == ""
						at = position{line: cur.line + 1, col: 0, end: 0}
					} else if m := c.re.FindStringIndex(l); m != nil {
						at, ok = position{line: cur.line + 1, col: m[0], end: m[1]}, true
					}
				}
			case "SAME":
				if cur.line < len(lines) {
					if m := c.re.FindStringIndex(lines[cur.line][cur.col:]); m != nil {
						at, ok = position{line: cur.line, col: cur.col + m[0], end: cur.col + m[1]}, true
					}
				}
			}
			if !ok {
				return c.fail("no match", lines, cur.line)
			}
			if err := checkNots(pending, lines, cur, at); err != nil {
				return err
			}
			pending = nil
			cur = position{line: at.line, col: at.end}
		}
	}
	return checkNots(pending, lines, cur, position{line: regionEnd, col: 0})
}

type position struct{ line, col, end int }

type check struct {
	kind string // "", NEXT, SAME, NOT, LABEL, EMPTY
	pat  string
	re   *regexp.Regexp
	line int // line in the patterns
}

func (c check) fail(why string, lines []string, near int) error {
	var sb strings.Builder
	name := "CHECK"
	if c.kind != "" {
		name += "-" + c.kind
	}
	fmt.Fprintf(&sb, "pattern line %d: %s: %s: %q", c.line, name, why, c.pat)
	lo, hi := max(0, near-3), min(len(lines), near+8)
	if lo < hi {
		sb.WriteString("\ninput near line ")
		fmt.Fprintf(&sb, "%d:", near+1)
		for i := lo; i < hi; i++ {
			fmt.Fprintf(&sb, "\n%5d| %s", i+1, lines[i])
		}
	}
	return fmt.Errorf("%s", sb.String())
}

// search finds the first match of re at or after p, before line end.
func search(re *regexp.Regexp, lines []string, p position, end int) (position, bool) {
	for i := p.line; i < end && i < len(lines); i++ {
		off := 0
		if i == p.line {
			off = p.col
		}
		if m := re.FindStringIndex(lines[i][off:]); m != nil {
			return position{line: i, col: off + m[0], end: off + m[1]}, true
		}
	}
	return position{}, false
}

// checkNots verifies no pattern in nots matches between from and to.
func checkNots(nots []check, lines []string, from, to position) error {
	for _, c := range nots {
		for i := from.line; i <= to.line && i < len(lines); i++ {
			l := lines[i]
			lo, hi := 0, len(l)
			if i == from.line {
				lo = min(from.col, len(l))
			}
			if i == to.line {
				hi = min(to.col, len(l))
			}
			if lo >= hi {
				continue
			}
			if m := c.re.FindStringIndex(l[lo:hi]); m != nil {
				return c.fail(fmt.Sprintf("excluded pattern found on input line %d", i+1), lines, i)
			}
		}
	}
	return nil
}

var directive = regexp.MustCompile(`CHECK(-NEXT|-SAME|-NOT|-LABEL|-EMPTY)?:`)

func parseChecks(patterns string) ([]check, error) {
	var out []check
	for n, line := range strings.Split(patterns, "\n") {
		m := directive.FindStringSubmatchIndex(line)
		if m == nil {
			continue
		}
		kind := ""
		if m[2] >= 0 {
			kind = line[m[2]+1 : m[3]]
		}
		pat := strings.TrimSpace(line[m[1]:])
		if pat == "" && kind != "EMPTY" {
			return nil, fmt.Errorf("pattern line %d: empty pattern", n+1)
		}
		re, err := compilePattern(pat)
		if err != nil {
			return nil, fmt.Errorf("pattern line %d: %w", n+1, err)
		}
		out = append(out, check{kind: kind, pat: pat, re: re, line: n + 1})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CHECK directives in patterns")
	}
	return out, nil
}

var hspace = regexp.MustCompile(`[ \t]+`)

// compilePattern turns literal text with {{regex}} segments into a regexp.
func compilePattern(p string) (*regexp.Regexp, error) {
	var sb strings.Builder
	for p != "" {
		i := strings.Index(p, "{{")
		lit := p
		if i >= 0 {
			lit = p[:i]
		}
		for j, part := range hspace.Split(lit, -1) {
			if j > 0 {
				sb.WriteString(`[ \t]+`)
			}
			sb.WriteString(regexp.QuoteMeta(part))
		}
		if i < 0 {
			break
		}
		k := strings.Index(p[i+2:], "}}")
		if k < 0 {
			return nil, fmt.Errorf("unterminated {{ in %q", p)
		}
		for i+2+k+2 < len(p) && p[i+2+k+2] == '}' {
			k++ // {{a{1,2}}}: the regex ends at the last of a run of braces
		}
		re := p[i+2 : i+2+k]
		if _, err := regexp.Compile(re); err != nil {
			return nil, fmt.Errorf("bad regex {{%s}}: %w", re, err)
		}
		sb.WriteString("(?:" + re + ")")
		p = p[i+2+k+2:]
	}
	return regexp.Compile(sb.String())
}
