package redirect

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrNoIPTables is returned (wrapped) when no iptables binary is installed.
var ErrNoIPTables = errors.New("redirect: iptables is not installed")

// lockWait is how long an iptables command waits for the xtables lock
// (seconds), so a stuck holder cannot hang Apply for ever.
const lockWait = 30

// openRealSystem opens iptables (the backend the namespace already uses),
// nftables and netlink for the current thread's namespace. Call it inside
// nsrun.Do.
func openRealSystem(log *zap.Logger) (*system, error) {
	be, err := detectBackend(log)
	if err != nil {
		return nil, err
	}
	sys := &system{backend: be.name, ipt: map[Family]iptablesAPI{}, net: netlinkNet{}, ipv6Enabled: ipv6Enabled}
	ipt4, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Path(be.ipt4), iptables.Timeout(lockWait))
	if err != nil {
		return nil, fmt.Errorf("redirect: %s: %w", be.ipt4, err)
	}
	sys.ipt[IPv4] = ipt4
	switch {
	case be.ipt6 == "":
		sys.noIPv6 = "ip6tables is not installed"
	default:
		ipt6, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Path(be.ipt6), iptables.Timeout(lockWait))
		if err != nil {
			sys.noIPv6 = fmt.Sprintf("%s does not work (%v)", be.ipt6, err)
		} else {
			sys.ipt[IPv6] = ipt6
		}
	}
	if be.name == "nft" {
		sys.tables = nftTables{}
	} else {
		sys.tables = legacyTables{}
	}
	return sys, nil
}

// backendTools are the binaries of one iptables backend.
type backendTools struct {
	name                     string // "nft" or "legacy"
	ipt4, ipt6, save4, save6 string // absolute paths; ipt6, save* may be ""
}

// sbinDirs are searched after $PATH: an init container's PATH often lacks
// the sbin directories iptables lives in.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

func lookTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// findBackends returns the installed backends, and the mode of the plain
// "iptables" command (the system's choice), "" if there is none.
func findBackends() (found map[string]*backendTools, defaultMode string) {
	found = map[string]*backendTools{}
	for _, name := range []string{"nft", "legacy"} {
		if p := lookTool("iptables-" + name); p != "" {
			found[name] = &backendTools{name, p, lookTool("ip6tables-" + name), lookTool("iptables-" + name + "-save"), lookTool("ip6tables-" + name + "-save")}
		}
	}
	if p := lookTool("iptables"); p != "" {
		out, _ := exec.Command(p, "--version").Output()
		defaultMode = "legacy"
		if bytes.Contains(out, []byte("nf_tables")) {
			defaultMode = "nft"
		}
		if found[defaultMode] == nil {
			found[defaultMode] = &backendTools{defaultMode, p, lookTool("ip6tables"), lookTool("iptables-save"), lookTool("ip6tables-save")}
		}
	}
	return found, defaultMode
}

// detectBackend picks the iptables backend the namespace already uses, by
// its live rules, not by which binaries exist: both are often installed,
// and rules added with one are invisible to the other, so adding ours to
// the other backend would silently interleave two rule sets. The backend
// with more rules wins; with none anywhere (a fresh namespace), the
// system's own choice for "iptables", or nft.
func detectBackend(log *zap.Logger) (*backendTools, error) {
	found, defaultMode := findBackends()
	if len(found) == 0 {
		return nil, fmt.Errorf("%w (looked for iptables-nft, iptables-legacy and iptables in %s); install it: apt-get install iptables (Debian, Ubuntu), apk add iptables (Alpine), dnf install iptables-nft (Fedora, RHEL)",
			ErrNoIPTables, strings.Join(append([]string{"$PATH"}, sbinDirs...), ", "))
	}
	if len(found) == 1 {
		for _, be := range found {
			log.Debug("redirect: iptables backend", zap.String("backend", be.name), zap.String("why", "the only one installed"))
			return be, nil
		}
	}
	counts := map[string]int{}
	for name, be := range found {
		n, err := countRules(be)
		if err != nil {
			// A backend whose save fails (e.g. no nf_tables in the
			// kernel) holds no rules we could see or add to.
			log.Debug("redirect: iptables backend unusable", zap.String("backend", name), zap.Error(err))
			delete(found, name)
			continue
		}
		counts[name] = n
	}
	pick, why := "", ""
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("redirect: no iptables backend works in this namespace (iptables-nft-save and iptables-legacy-save both fail)")
	case len(found) == 1:
		for name := range found {
			pick, why = name, "the only one that works"
		}
	case counts["legacy"] > counts["nft"]:
		pick, why = "legacy", "it holds the namespace's rules"
	case counts["nft"] > counts["legacy"]:
		pick, why = "nft", "it holds the namespace's rules"
	case found[defaultMode] != nil:
		pick, why = defaultMode, "no rules yet; the system's iptables uses it"
	default:
		pick, why = "nft", "no rules yet"
	}
	log.Info("redirect: iptables backend", zap.String("backend", pick), zap.String("why", why),
		zap.Int("nft_rules", counts["nft"]), zap.Int("legacy_rules", counts["legacy"]))
	return found[pick], nil
}

// countRules counts the rules the backend's save commands print, both
// families.
func countRules(be *backendTools) (int, error) {
	n := 0
	for i, save := range []string{be.save4, be.save6} {
		if save == "" {
			if i == 0 {
				return 0, fmt.Errorf("no save command for %s", be.ipt4)
			}
			continue
		}
		out, err := exec.Command(save).Output()
		if err != nil {
			if i == 0 {
				return 0, fmt.Errorf("%s: %w", save, err)
			}
			continue
		}
		for _, l := range bytes.Split(out, []byte("\n")) {
			if bytes.HasPrefix(l, []byte("-A ")) {
				n++
			}
		}
	}
	return n, nil
}

// ipv6Enabled reads net.ipv6.conf.all.disable_ipv6. /proc/sys/net shows
// the namespace of the thread that opens the file (not of the process, as
// /proc/net does), which is the locked thread nsrun.Do runs us on. No
// such file means no IPv6 in the kernel.
func ipv6Enabled() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	}
	return strings.TrimSpace(string(b)) == "0", nil
}

// nftTables handles tables of the iptables-nft backend with nftables'
// netlink API. Each call opens its netlink socket on the calling thread,
// hence in the namespace nsrun.Do put it in.
//
// Why delete tables at all: iptables-nft creates a table (e.g. "nat") the
// first time a rule goes into it, and never removes it, so after
// Apply+Cleanup in a fresh namespace iptables-save would show an empty
// "*nat" that was not there before. Apply marks a table it creates with
// ChainOwner; Cleanup deletes such a table when it holds nothing else. A
// table that existed before Apply is never deleted.
type nftTables struct{}

func nftFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

func (nftTables) CanDelete() bool { return true }

func (nftTables) Exists(f Family, table string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftFamily(f))
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == table }), nil
}

func (nftTables) DeleteIfEmpty(f Family, name string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	fam := nftFamily(f)
	tables, err := c.ListTablesOfFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == name })
	if i < 0 {
		return false, nil
	}
	t := tables[i]
	chains, err := c.ListChainsOfTableFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list chains of %s: %w", name, err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		n++
		if ch.Hooknum == nil || !slices.Contains(builtinPolicyChains[name], ch.Name) ||
			(ch.Policy != nil && *ch.Policy != nftables.ChainPolicyAccept) {
			return false, nil
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return false, fmt.Errorf("list rules of %s/%s: %w", name, ch.Name, err)
		}
		if len(rules) > 0 {
			return false, nil
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return false, fmt.Errorf("list sets of %s: %w", name, err)
	}
	flowtables, err := c.ListFlowtables(t)
	if err != nil {
		return false, fmt.Errorf("list flowtables of %s: %w", name, err)
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return false, fmt.Errorf("list objects of %s: %w", name, err)
	}
	// Use counts everything in the table; anything we did not list
	// above keeps it. google/nftables v0.3.0 decodes this big-endian
	// attribute in host order, so accept either byte order.
	if use := uint32(n); len(sets)+len(flowtables)+len(objs) > 0 || (t.Use != use && t.Use != bits.ReverseBytes32(use)) {
		return false, nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("delete table %s: %w", name, err)
	}
	return true, nil
}

// legacyTables: the legacy backend's tables live as long as the kernel
// module, so they are never deleted; a table exists in a namespace once it
// has been used there, which even a read does. The list is read from
// /proc/thread-self/net: /proc/net is the main thread's namespace.
type legacyTables struct{}

func (legacyTables) CanDelete() bool { return false }

func (legacyTables) DeleteIfEmpty(Family, string) (bool, error) { return false, nil }

func (legacyTables) Exists(f Family, table string) (bool, error) {
	file := "/proc/thread-self/net/ip_tables_names"
	if f == IPv6 {
		file = "/proc/thread-self/net/ip6_tables_names"
	}
	b, err := os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil // the module is not loaded: no tables at all
	case err != nil:
		return false, err
	}
	return slices.Contains(strings.Fields(string(b)), table), nil
}

// netlinkNet manages routing rules, routes and addresses with netlink, in
// the namespace of the calling thread.
type netlinkNet struct{}

func nlFamily(f Family) int {
	if f == IPv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func withHandle[T any](fn func(h *netlink.Handle) (T, error)) (T, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		var zero T
		return zero, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return fn(h)
}

func nlRule(f Family, r PolicyRule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = nlFamily(f)
	nr.Mark = r.Mark
	mask := r.Mask
	nr.Mask = &mask
	nr.Table = r.Table
	return nr
}

func (netlinkNet) HasPolicyRule(f Family, r PolicyRule) (bool, error) {
	return withHandle(func(h *netlink.Handle) (bool, error) {
		rules, err := h.RuleList(nlFamily(f))
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(rules, func(x netlink.Rule) bool {
			return x.Mark == r.Mark && x.Mask != nil && *x.Mask == r.Mask && x.Table == r.Table && !x.Invert
		}), nil
	})
}

func (netlinkNet) AddPolicyRule(f Family, r PolicyRule) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) { return struct{}{}, h.RuleAdd(nlRule(f, r)) })
	return err
}

func (netlinkNet) DelPolicyRule(f Family, r PolicyRule) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) { return struct{}{}, h.RuleDel(nlRule(f, r)) })
	return err
}

func nlRoute(f Family, h *netlink.Handle, r LocalRoute) (*netlink.Route, error) {
	link, err := h.LinkByName(r.Dev)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", r.Dev, err)
	}
	return &netlink.Route{
		Family:    nlFamily(f),
		LinkIndex: link.Attrs().Index,
		Dst:       prefixNet(r.Dst),
		Table:     r.Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}, nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (netlinkNet) HasLocalRoute(f Family, r LocalRoute) (bool, error) {
	return withHandle(func(h *netlink.Handle) (bool, error) {
		want, err := nlRoute(f, h, r)
		if err != nil {
			return false, err
		}
		routes, err := h.RouteListFiltered(nlFamily(f), &netlink.Route{Table: r.Table, Type: unix.RTN_LOCAL},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(routes, func(x netlink.Route) bool {
			ones := 0
			if x.Dst != nil {
				ones, _ = x.Dst.Mask.Size()
			}
			return x.LinkIndex == want.LinkIndex && ones == r.Dst.Bits() &&
				(x.Dst == nil || x.Dst.IP.Equal(want.Dst.IP))
		}), nil
	})
}

func (netlinkNet) AddLocalRoute(f Family, r LocalRoute) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) {
		route, err := nlRoute(f, h, r)
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, h.RouteAdd(route)
	})
	return err
}

func (netlinkNet) DelLocalRoute(f Family, r LocalRoute) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) {
		route, err := nlRoute(f, h, r)
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, h.RouteDel(route)
	})
	return err
}

func loAddr(p netip.Prefix) *netlink.Addr {
	// NODAD: duplicate address detection would hold the address
	// "tentative" (unusable as a source) for a second or so.
	return &netlink.Addr{IPNet: prefixNet(p), Flags: unix.IFA_F_NODAD}
}

func (netlinkNet) HasLoopbackAddr(p netip.Prefix) (bool, error) {
	return withHandle(func(h *netlink.Handle) (bool, error) {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return false, fmt.Errorf("link lo: %w", err)
		}
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		addrs, err := h.AddrList(lo, fam)
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			ip, ok := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			return ok && ip.Unmap() == p.Addr() && ones == p.Bits()
		}), nil
	})
}

func (netlinkNet) AddLoopbackAddr(p netip.Prefix) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return struct{}{}, fmt.Errorf("link lo: %w", err)
		}
		return struct{}{}, h.AddrAdd(lo, loAddr(p))
	})
	return err
}

func (netlinkNet) DelLoopbackAddr(p netip.Prefix) error {
	_, err := withHandle(func(h *netlink.Handle) (struct{}, error) {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return struct{}{}, fmt.Errorf("link lo: %w", err)
		}
		return struct{}{}, h.AddrDel(lo, loAddr(p))
	})
	return err
}
