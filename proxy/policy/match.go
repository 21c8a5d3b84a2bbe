package policy

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// patterns is a compiled list of path-like patterns (request paths,
// SPIFFE IDs): exact ones in a map, prefixes sorted, globs segment by
// segment.
type patterns struct {
	any      bool
	exact    map[string]struct{}
	prefixes []string
	globs    [][]string // segments; "*" is any one segment; a last segment ending in '*' is a prefix of the rest
}

func compilePatterns(ps []string) *patterns {
	c := &patterns{exact: map[string]struct{}{}}
	for _, p := range ps {
		switch star := strings.IndexByte(p, '*'); {
		case p == "*":
			c.any = true
		case star < 0:
			c.exact[p] = struct{}{}
		case star == len(p)-1:
			c.prefixes = append(c.prefixes, p[:star])
		default:
			c.globs = append(c.globs, strings.Split(p, "/"))
		}
	}
	slices.Sort(c.prefixes)
	return c
}

func (c *patterns) match(s string) bool {
	if c.any {
		return true
	}
	if _, ok := c.exact[s]; ok {
		return true
	}
	for _, p := range c.prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	for _, g := range c.globs {
		if globMatch(g, s) {
			return true
		}
	}
	return false
}

// globMatch matches s against segments g.
func globMatch(g []string, s string) bool {
	for i, seg := range g {
		last := i == len(g)-1
		var part string
		if j := strings.IndexByte(s, '/'); j >= 0 && !last {
			part, s = s[:j], s[j+1:]
		} else if !last {
			return false
		} else {
			part, s = s, ""
		}
		switch {
		case last && strings.HasSuffix(seg, "*"):
			// The pattern's trailing '*': any rest, slashes included.
			return strings.HasPrefix(part, seg[:len(seg)-1])
		case seg == "*":
			if part == "" {
				return false
			}
		case part != seg:
			return false
		}
	}
	return s == ""
}

// Patterns is a compiled list of patterns as rules write request paths
// (HTTPMatch.Paths) and SPIFFE IDs (Source.Identities): exact, a prefix
// ending in "*", "*" standing for one segment, or "*" alone for anything.
// Other packages match paths and identities with it, so that a pattern
// means the same in every section of the config. Its zero value matches
// nothing. Match does not allocate.
type Patterns struct{ c *patterns }

// CompilePatterns compiles ps, which CheckPath (paths) or CheckIdentity
// (SPIFFE IDs) should have accepted.
func CompilePatterns(ps []string) Patterns { return Patterns{compilePatterns(ps)} }

// Match reports whether s (a normalised path, see NormalizePath, or a
// SPIFFE ID) matches one of the patterns.
func (p Patterns) Match(s string) bool { return p.c != nil && p.c.match(s) }

// Hosts is a compiled list of host names as rules write them
// (Destination.Hosts): exact, or "*.example.com" for any name under
// example.com. Its zero value matches nothing. Match does not allocate
// for a name in lower case.
type Hosts struct{ c *hosts }

// CompileHosts compiles hs, which CheckHost should have accepted.
func CompileHosts(hs []string) Hosts { return Hosts{compileHosts(hs)} }

// Match reports whether name (any case, a trailing dot and a port
// allowed) is one of the hosts.
func (h Hosts) Match(name string) bool { return h.c != nil && h.c.match(name) }

// hosts is a compiled list of host names: exact, or "*.suffix".
type hosts struct {
	exact    map[string]struct{}
	suffixes []string // ".example.com"
}

func compileHosts(hs []string) *hosts {
	c := &hosts{exact: map[string]struct{}{}}
	for _, h := range hs {
		h = strings.TrimSuffix(h, ".")
		if strings.HasPrefix(h, "*.") {
			c.suffixes = append(c.suffixes, h[1:])
		} else {
			c.exact[h] = struct{}{}
		}
	}
	return c
}

// match reports whether name (any case, a trailing dot and a port
// allowed) is one of the hosts.
func (c *hosts) match(name string) bool {
	name = canonHost(name)
	if name == "" {
		return false
	}
	if _, ok := c.exact[name]; ok {
		return true
	}
	for _, s := range c.suffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// canonHost lowercases a host, and drops a port and a trailing dot.
func canonHost(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.Count(h, ":") == 1 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// cidrs is a list of prefixes.
type cidrs []netip.Prefix

func (c cidrs) match(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// set is a set of strings.
type set map[string]struct{}

func newSet(ss []string) set {
	m := make(set, len(ss))
	for _, s := range ss {
		m[s] = struct{}{}
	}
	return m
}

func (s set) has(v string) bool { _, ok := s[v]; return ok }

// header is a compiled HeaderMatch.
type header struct {
	name    string // lower case
	exact   string
	prefix  string
	re      *regexp.Regexp
	present *bool
}

func (h header) match(r Request) bool {
	if h.present != nil {
		return r.Has(h.name) == *h.present
	}
	if !r.Has(h.name) {
		return false
	}
	v := r.Get(h.name)
	switch {
	case h.re != nil:
		return h.re.MatchString(v)
	case h.prefix != "":
		return strings.HasPrefix(v, h.prefix)
	default:
		return v == h.exact
	}
}

// NormalizePath returns the path of a request target as policy matches
// it: the query and fragment left out, percent-encoded bytes decoded
// (an encoded '/' too, so that /api%2F..%2Fadmin is /admin, as an app
// that decodes it would see it), repeated slashes merged, and "." and
// ".." segments resolved. An absolute-form target (http://host/path)
// gives its path. The result always starts with '/'.
func NormalizePath(target string) string {
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	if !strings.HasPrefix(target, "/") {
		if i := strings.Index(target, "://"); i >= 0 {
			rest := target[i+3:]
			if j := strings.IndexByte(rest, '/'); j >= 0 {
				target = rest[j:]
			} else {
				target = "/"
			}
		}
	}
	if isClean(target) {
		return target
	}
	var b strings.Builder
	b.Grow(len(target) + 1)
	for i := 0; i < len(target); i++ {
		c := target[i]
		if c == '%' && i+2 < len(target) && isHex(target[i+1]) && isHex(target[i+2]) {
			c = unhex(target[i+1])<<4 | unhex(target[i+2])
			i += 2
		}
		if c == '\\' {
			c = '/' // as some servers (IIS, some frameworks) read it
		}
		b.WriteByte(c)
	}
	segs := strings.Split(b.String(), "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		switch s {
		case "", ".":
			if i == len(segs)-1 && len(out) > 0 {
				out = append(out, "") // keep a trailing slash
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if i == len(segs)-1 && len(out) > 0 {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

// isClean reports whether p needs no normalising: it starts with '/', and
// has no '%', '\\', "//" and no "." or ".." segment.
func isClean(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', '\\':
			return false
		case '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return false
			}
			if i+1 < len(p) && p[i+1] == '.' {
				rest := p[i+2:]
				if rest == "" || rest[0] == '/' || rest[0] == '.' && (len(rest) == 1 || rest[1] == '/') {
					return false
				}
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
