package redirect

import (
	"fmt"
	"strings"
)

// Render returns rs as iptables-save style text, one section per address
// family: "*table", ":CHAIN - [0:0]" for each chain of ours, "-A" lines
// (jumps in built-in chains first), "COMMIT". Comment lines say what the
// rules are for, and show the routing rules, routes and addresses of the
// Ruleset as ip(8) commands (Apply installs those with netlink).
//
// The text is for people and diffs (--dry-run, the golden files). Apply
// does not feed it to iptables-restore: it installs rule by rule, so that
// it can compare with what exists and undo what it did.
func (rs Ruleset) Render() string {
	var b strings.Builder
	for i, fr := range rs.Families {
		if i > 0 {
			b.WriteByte('\n')
		}
		tool := "iptables-save"
		if fr.Family == IPv6 {
			tool = "ip6tables-save"
		}
		fmt.Fprintf(&b, "# %s rules (%s format)\n", fr.Family, tool)
		if fr.Family == IPv6 && rs.IPv6Auto {
			b.WriteString("# --ipv6=auto: installed only if the namespace has IPv6 enabled and ip6tables is installed\n")
		}
		b.WriteString(fr.Render())
	}
	return b.String()
}

// String is Render.
func (rs Ruleset) String() string { return rs.Render() }

// Render returns the iptables-save style text of one family (see
// Ruleset.Render).
func (fr FamilyRules) Render() string {
	var b strings.Builder
	for _, t := range fr.Tables {
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			if !c.Builtin {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
			}
		}
		for _, c := range t.Chains {
			why := ""
			for _, r := range c.Rules {
				if r.Why != "" && r.Why != why {
					fmt.Fprintf(&b, "# %s\n", r.Why)
				}
				why = r.Why
				fmt.Fprintf(&b, "-A %s %s\n", c.Name, strings.Join(r.Args, " "))
			}
		}
		b.WriteString("COMMIT\n")
	}
	ip := "ip -4"
	if fr.Family == IPv6 {
		ip = "ip -6"
	}
	if len(fr.PolicyRules)+len(fr.LocalRoutes)+len(fr.LoopbackAddrs) > 0 {
		b.WriteString("# routing and addresses (installed with netlink; as ip commands):\n")
	}
	for _, r := range fr.PolicyRules {
		fmt.Fprintf(&b, "#   %s rule add fwmark %#x/%#x lookup %d\n", ip, r.Mark, r.Mask, r.Table)
	}
	for _, r := range fr.LocalRoutes {
		fmt.Fprintf(&b, "#   %s route add local %s dev %s table %d\n", ip, r.Dst, r.Dev, r.Table)
	}
	for _, a := range fr.LoopbackAddrs {
		fmt.Fprintf(&b, "#   %s addr add %s dev lo nodad\n", ip, a)
	}
	return b.String()
}
