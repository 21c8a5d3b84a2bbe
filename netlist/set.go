package netlist

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// Set is a set of addresses given as CIDRs, to tell whether one address
// is in any of many prefixes: the prefixes become sorted, merged ranges
// per family, searched in O(log n), with no allocation per lookup.
// A Set is immutable once made; the zero Set is empty.
type Set struct {
	v4 []span4
	v6 []span6
	n  int // prefixes it was made of
}

type span4 struct{ lo, hi uint32 }

// u128 is an IPv6 address as a number.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

// next is a+1; ok is false when a is the largest address.
func (a u128) next() (u128, bool) {
	if a.lo != math.MaxUint64 {
		return u128{a.hi, a.lo + 1}, true
	}
	if a.hi != math.MaxUint64 {
		return u128{a.hi + 1, 0}, true
	}
	return a, false
}

type span6 struct{ lo, hi u128 }

// NewSet returns the set of the addresses of every prefix of lists.
// Prefixes are taken masked and unmapped (an IPv4-mapped prefix is its
// IPv4 one); invalid ones are left out: check them first (CheckPrefix).
func NewSet(lists ...[]netip.Prefix) *Set {
	s := &Set{}
	for _, l := range lists {
		for _, p := range l {
			if !p.IsValid() {
				continue
			}
			s.n++
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), max(0, p.Bits()-96))
			}
			p = p.Masked()
			if p.Addr().Is4() {
				lo := binary.BigEndian.Uint32(p.Addr().AsSlice())
				hi := lo | uint32(uint64(math.MaxUint32)>>p.Bits())
				s.v4 = append(s.v4, span4{lo, hi})
				continue
			}
			lo := addr128(p.Addr())
			hi := lo
			switch b := p.Bits(); {
			case b == 0:
				hi = u128{math.MaxUint64, math.MaxUint64}
			case b < 64:
				hi = u128{lo.hi | math.MaxUint64>>b, math.MaxUint64}
			case b < 128:
				hi.lo |= math.MaxUint64 >> (b - 64)
			}
			s.v6 = append(s.v6, span6{lo, hi})
		}
	}
	slices.SortFunc(s.v4, func(a, b span4) int { return cmp.Compare(a.lo, b.lo) })
	s.v4 = merge(s.v4, func(a, b span4) (span4, bool) {
		if a.hi == math.MaxUint32 || b.lo <= a.hi+1 {
			return span4{a.lo, max(a.hi, b.hi)}, true
		}
		return a, false
	})
	slices.SortFunc(s.v6, func(a, b span6) int { return a.lo.cmp(b.lo) })
	s.v6 = merge(s.v6, func(a, b span6) (span6, bool) {
		n, ok := a.hi.next()
		if !ok || b.lo.cmp(n) <= 0 {
			if b.hi.cmp(a.hi) > 0 {
				a.hi = b.hi
			}
			return a, true
		}
		return a, false
	})
	return s
}

// merge joins neighbours of the sorted spans that join says overlap or
// touch.
func merge[S any](spans []S, join func(a, b S) (S, bool)) []S {
	if len(spans) == 0 {
		return nil
	}
	out := spans[:1]
	for _, b := range spans[1:] {
		if j, ok := join(out[len(out)-1], b); ok {
			out[len(out)-1] = j
			continue
		}
		out = append(out, b)
	}
	return slices.Clip(out)
}

func addr128(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// Contains reports whether a is in the set. An IPv4-mapped IPv6 address
// is taken as its IPv4 address; a zone is ignored.
func (s *Set) Contains(a netip.Addr) bool {
	if s == nil {
		return false
	}
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:])
		i, _ := slices.BinarySearchFunc(s.v4, v, func(sp span4, v uint32) int {
			switch {
			case sp.hi < v:
				return -1
			case sp.lo > v:
				return 1
			}
			return 0
		})
		return i < len(s.v4) && s.v4[i].lo <= v && v <= s.v4[i].hi
	}
	if !a.Is6() {
		return false
	}
	v := addr128(a)
	i, _ := slices.BinarySearchFunc(s.v6, v, func(sp span6, v u128) int {
		switch {
		case sp.hi.cmp(v) < 0:
			return -1
		case sp.lo.cmp(v) > 0:
			return 1
		}
		return 0
	})
	return i < len(s.v6) && s.v6[i].lo.cmp(v) <= 0 && v.cmp(s.v6[i].hi) <= 0
}

// Len returns how many prefixes the set was made of.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// MaxLinesErrors bounds the bad lines ParseLines reports one by one; the
// rest are counted.
const MaxLinesErrors = 10

// ParseLines parses a CIDR list file: one CIDR or address per line (as
// ParseCIDRs takes its items), blank lines and comments ('#' to the end
// of the line) ignored, at most maxEntries entries. Every bad line is
// reported with its number (up to MaxLinesErrors of them, then how many
// more), like "line 3: ...".
func ParseLines(data []byte, maxEntries int) ([]netip.Prefix, error) {
	var (
		out  []netip.Prefix
		errs []error
		more int
	)
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		p, err := parseCIDR(string(line))
		switch {
		case err == nil && len(out) >= maxEntries:
			return nil, fmt.Errorf("line %d: more than %d entries; split the list, or merge its CIDRs", n, maxEntries)
		case err == nil:
			out = append(out, p)
		case len(errs) < MaxLinesErrors:
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
		default:
			more++
		}
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("and %d more bad lines", more))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
