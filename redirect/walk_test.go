package redirect

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// This file is a small iptables evaluator for the matches and targets
// Build uses, so tests can ask what happens to a packet ("is the proxy's
// own connection captured?") instead of reading rules. An unknown match or
// target fails the test: the evaluator must grow with Build.

// packet is what the rules can see of a packet.
type packet struct {
	proto        string // "tcp" or "udp"
	src, dst     netip.Addr
	sport, dport uint16
	in, out      string   // interfaces; "" where the hook has none
	uid          uint32   // owner of a locally generated packet
	gids         []uint32 // its group(s)
	local        bool     // locally generated: has an owner
	mark         uint32
	connmark     uint32
	ctstate      string // NEW, ESTABLISHED, RELATED
	transparent  bool   // belongs to a transparent (IP_TRANSPARENT) socket
	srcLocal     bool   // the source address is one of the namespace's
}

// verdict is where the packet ends up after one table's built-in chain.
type verdict struct {
	redirect uint16 // REDIRECT --to-ports
	tproxy   uint16 // TPROXY --on-port
	accepted bool   // ACCEPT
	zone     int    // CT --zone
	zoneOrig int    // CT --zone-orig
	mark     uint32 // packet mark afterwards
	trace    []string
}

func (v verdict) captured() bool { return v.redirect != 0 || v.tproxy != 0 }

func (v verdict) String() string {
	switch {
	case v.redirect != 0:
		return "REDIRECT " + strconv.Itoa(int(v.redirect))
	case v.tproxy != 0:
		return "TPROXY " + strconv.Itoa(int(v.tproxy))
	case v.accepted:
		return "ACCEPT"
	}
	return "not captured"
}

// walk runs p through built-in chain chain of table in fr.
func walk(t *testing.T, fr FamilyRules, table, chain string, p packet) verdict {
	t.Helper()
	v := verdict{mark: p.mark}
	tb := fr.table(table)
	if tb == nil {
		return v
	}
	w := walker{t: t, tb: tb, p: p, v: &v}
	w.chain(chain, 0)
	return v
}

type walker struct {
	t  *testing.T
	tb *Table
	p  packet
	v  *verdict
}

// chain evaluates chain; it reports whether a terminal verdict was reached.
func (w *walker) chain(name string, depth int) bool {
	w.t.Helper()
	if depth > 10 {
		w.t.Fatalf("jump loop at %s", name)
	}
	var c *Chain
	for i := range w.tb.Chains {
		if w.tb.Chains[i].Name == name {
			c = &w.tb.Chains[i]
		}
	}
	if c == nil {
		if isBuiltinChain(name) {
			return false
		}
		w.t.Fatalf("%s: jump to undeclared chain %s", w.tb.Name, name)
	}
	for _, r := range c.Rules {
		target, opts, ok := w.match(r.Args)
		if !ok {
			continue
		}
		w.v.trace = append(w.v.trace, name+": "+strings.Join(r.Args, " "))
		switch target {
		case "RETURN":
			return false
		case "ACCEPT":
			w.v.accepted = true
			return true
		case "REDIRECT":
			w.v.redirect = uint16(w.num(opt(opts, "--to-ports")))
			return true
		case "TPROXY":
			w.v.tproxy = uint16(w.num(opt(opts, "--on-port")))
			v, m := w.markMask(opt(opts, "--tproxy-mark"))
			w.v.mark = w.v.mark&^m ^ v
			return true
		case "MARK":
			v, m := w.markMask(opt(opts, "--set-xmark"))
			w.v.mark = w.v.mark&^m ^ v
			w.p.mark = w.v.mark
		case "CONNMARK":
			v, m := w.markMask(opt(opts, "--set-xmark"))
			w.p.connmark = w.p.connmark&^m ^ v
		case "CT":
			switch {
			case opt(opts, "--zone") != "":
				w.v.zone = w.num(opt(opts, "--zone"))
			case opt(opts, "--zone-orig") != "":
				w.v.zoneOrig = w.num(opt(opts, "--zone-orig"))
			default:
				w.t.Fatalf("walk: CT without a zone: %v", opts)
			}
		default:
			if !strings.HasPrefix(target, ChainPrefix) {
				w.t.Fatalf("walk: unknown target %q", target)
			}
			if w.chain(target, depth+1) {
				return true
			}
		}
	}
	return false
}

func opt(opts []string, name string) string {
	if i := slices.Index(opts, name); i >= 0 && i+1 < len(opts) {
		return opts[i+1]
	}
	return ""
}

func (w *walker) num(s string) int {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		w.t.Fatalf("walk: bad number %q", s)
	}
	return int(n)
}

func (w *walker) markMask(s string) (uint32, uint32) {
	v, m, ok := strings.Cut(s, "/")
	if !ok {
		m = "0xffffffff"
	}
	return uint32(w.num(v)), uint32(w.num(m))
}

// match evaluates the matches of args; it returns the target and its
// options, and whether every match held.
func (w *walker) match(args []string) (target string, opts []string, ok bool) {
	w.t.Helper()
	p := w.p
	ok = true
	neg := false
	check := func(cond bool) {
		if cond == neg {
			ok = false
		}
		neg = false
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			i++
			if i >= len(args) {
				w.t.Fatalf("walk: %q lacks a value in %q", a, args)
			}
			return args[i]
		}
		switch a {
		case "!":
			neg = true
		case "-s", "-d":
			pfx := netip.MustParsePrefix(next())
			addr := p.src
			if a == "-d" {
				addr = p.dst
			}
			check(pfx.Contains(addr))
		case "-i":
			check(p.in == next())
		case "-o":
			check(p.out == next())
		case "-p":
			check(p.proto == next())
		case "-m":
			switch m := next(); m {
			case "tcp", "udp", "owner", "mark", "socket", "conntrack", "addrtype", "connmark":
			default:
				w.t.Fatalf("walk: unknown match module %q", m)
			}
		case "--dport":
			check(strconv.Itoa(int(p.dport)) == next())
		case "--sport":
			check(strconv.Itoa(int(p.sport)) == next())
		case "--uid-owner":
			check(p.local && strconv.Itoa(int(p.uid)) == next())
		case "--gid-owner":
			g := uint32(w.num(next()))
			check(p.local && slices.Contains(p.gids, g))
		case "--mark":
			v, m := w.markMask(next())
			// -m mark and -m connmark share the option name; the module
			// before it says which.
			field := p.mark
			if prevModule(args, i) == "connmark" {
				field = p.connmark
			}
			check(field&m == v)
		case "--transparent":
			check(p.transparent)
		case "--ctstate":
			check(slices.Contains(strings.Split(next(), ","), p.ctstate))
		case "--src-type":
			if next() != "LOCAL" {
				w.t.Fatalf("walk: only --src-type LOCAL is known")
			}
			check(p.srcLocal)
		case "-j", "-g":
			return next(), args[i+1:], ok
		default:
			w.t.Fatalf("walk: unknown option %q in %q", a, args)
		}
	}
	w.t.Fatalf("walk: rule without target: %q", args)
	return "", nil, false
}

func prevModule(args []string, i int) string {
	for j := i - 1; j > 0; j-- {
		if args[j-1] == "-m" {
			return args[j]
		}
	}
	return ""
}
