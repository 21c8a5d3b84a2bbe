package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"meshgate/nsrun"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2
// does, so "ip netns exec NAME" works on a lab's pods too.
const netnsDir = "/run/netns"

// namePrefix starts every namespace a lab creates: "mglab<pid>x<n>-<pod>".
// The creating PID lets New remove namespaces left by a crashed run.
const namePrefix = "mglab"

// Options configures a Lab. The zero value is usable.
type Options struct {
	// Subnet4 is the pods' IPv4 subnet; pod n gets host address n+1.
	// Zero means 10.248.<k>.0/24, with k chosen per lab.
	Subnet4 netip.Prefix
	// Subnet6 is the pods' IPv6 subnet. Zero means fd00:6d67:<k>::/64.
	Subnet6 netip.Prefix
	// NoIPv6 leaves IPv6 off in every pod.
	NoIPv6 bool
}

// Lab is a set of pods joined by a bridge.
type Lab struct {
	id      string
	opts    Options
	bridge  string // bridge namespace name
	brNS    netns.NsHandle
	brLinks *netlink.Handle

	mu    sync.Mutex
	pods  []*Pod
	procs []*Process
	names []string // every namespace created, for Close
}

// Pod is one network namespace of a lab.
type Pod struct {
	lab  *Lab
	Name string     // short name given to AddPod
	NS   string     // namespace name under /run/netns
	IPv4 netip.Addr // address on eth0
	IPv6 netip.Addr // address on eth0; invalid when the lab has no IPv6
}

// Path returns the pod's namespace path, for --netns.
func (p *Pod) Path() string { return filepath.Join(netnsDir, p.NS) }

var labSeq struct {
	sync.Mutex
	n int
}

// New creates an empty lab (its bridge namespace). Call Close when done.
func New(opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("topology: network namespaces need root: run as root (sudo)")
	}
	if err := sharedNetnsDir(); err != nil {
		return nil, err
	}
	removeStale()
	labSeq.Lock()
	labSeq.n++
	n := labSeq.n
	labSeq.Unlock()
	k := (os.Getpid()*7 + n) % 250
	if !opts.Subnet4.IsValid() {
		opts.Subnet4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 248, byte(k), 0}), 24)
	}
	if !opts.Subnet6.IsValid() && !opts.NoIPv6 {
		opts.Subnet6 = netip.MustParsePrefix(fmt.Sprintf("fd00:6d67:%x::/64", k))
	}
	l := &Lab{id: fmt.Sprintf("%s%dx%d", namePrefix, os.Getpid(), n), opts: opts}
	l.bridge = l.id + "-br"
	ns, err := l.newNamespace(l.bridge)
	if err != nil {
		return nil, err
	}
	l.brNS = ns
	fail := func(err error) (*Lab, error) {
		_ = l.Close()
		return nil, err
	}
	if l.brLinks, err = netlink.NewHandleAt(ns); err != nil {
		return fail(fmt.Errorf("topology: netlink in %s: %w", l.bridge, err))
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := l.brLinks.LinkAdd(br); err != nil {
		return fail(fmt.Errorf("topology: add bridge br0: %w", err))
	}
	if err := l.brLinks.LinkSetUp(br); err != nil {
		return fail(fmt.Errorf("topology: bring up br0: %w", err))
	}
	return l, nil
}

// AddPod creates a pod namespace named name (letters and digits, at most 8),
// wires its eth0 to the bridge and assigns it the next addresses.
func (l *Lab) AddPod(name string) (*Pod, error) {
	if name == "" || len(name) > 8 || strings.ContainsAny(name, " /-") {
		return nil, fmt.Errorf("topology: pod name %q: want 1-8 letters or digits", name)
	}
	l.mu.Lock()
	idx := len(l.pods) + 1
	l.mu.Unlock()
	p := &Pod{lab: l, Name: name, NS: l.id + "-" + name}
	p.IPv4 = nthAddr(l.opts.Subnet4, idx)
	if !l.opts.NoIPv6 {
		p.IPv6 = nthAddr(l.opts.Subnet6, idx)
	}
	ns, err := l.newNamespace(p.NS)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("topology: netlink in %s: %w", p.NS, err)
	}
	defer h.Close()

	if !l.opts.NoIPv6 {
		// No duplicate address detection: addresses are usable at once.
		if err := nsrun.Do(p.Path(), func() error {
			for _, f := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0o644); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("topology: disable IPv6 DAD in %s: %w", p.NS, err)
		}
	} else {
		_ = nsrun.Do(p.Path(), func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
		})
	}

	hostSide := "v" + name
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostSide},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := l.brLinks.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("topology: add veth %s: %w", hostSide, err)
	}
	br, err := l.brLinks.LinkByName("br0")
	if err != nil {
		return nil, fmt.Errorf("topology: find br0: %w", err)
	}
	if err := l.brLinks.LinkSetMaster(veth, br); err != nil {
		return nil, fmt.Errorf("topology: attach %s to br0: %w", hostSide, err)
	}
	if err := l.brLinks.LinkSetUp(veth); err != nil {
		return nil, fmt.Errorf("topology: bring up %s: %w", hostSide, err)
	}

	for _, ifname := range []string{"lo", "eth0"} {
		link, err := h.LinkByName(ifname)
		if err != nil {
			return nil, fmt.Errorf("topology: %s in %s: %w", ifname, p.NS, err)
		}
		if ifname == "eth0" {
			addrs := []netip.Prefix{netip.PrefixFrom(p.IPv4, l.opts.Subnet4.Bits())}
			if p.IPv6.IsValid() {
				addrs = append(addrs, netip.PrefixFrom(p.IPv6, l.opts.Subnet6.Bits()))
			}
			for _, a := range addrs {
				nl := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
				if a.Addr().Is6() {
					nl.Flags = 0x02 // IFA_F_NODAD
				}
				if err := h.AddrAdd(link, nl); err != nil {
					return nil, fmt.Errorf("topology: assign %s to %s/eth0: %w", a, p.NS, err)
				}
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("topology: bring up %s in %s: %w", ifname, p.NS, err)
		}
	}
	l.mu.Lock()
	l.pods = append(l.pods, p)
	l.mu.Unlock()
	return p, nil
}

// Pods returns the pods in the order they were added.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Pod(nil), l.pods...)
}

// Close stops every process the lab started and deletes every namespace it
// created. It returns the first problem but always tries everything.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	names := l.names
	l.names = nil
	l.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(2 * time.Second)
	}
	if l.brLinks != nil {
		l.brLinks.Close()
		l.brLinks = nil
	}
	if l.brNS != 0 {
		l.brNS.Close()
		l.brNS = 0
	}
	for i := len(names) - 1; i >= 0; i-- {
		if err := deleteNamespace(names[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Namespaces returns the names of the namespaces the lab holds now.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.names...)
}

// Leftovers lists namespaces on this machine made by a lab of this process
// that still exist: after every Close it should be empty.
func Leftovers() []string {
	entries, _ := os.ReadDir(netnsDir)
	mine := fmt.Sprintf("%s%dx", namePrefix, os.Getpid())
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), mine) {
			out = append(out, e.Name())
		}
	}
	return out
}

// newNamespace creates a named namespace without disturbing the caller:
// the creating thread unshares into it and is then retired, never reused.
func (l *Lab) newNamespace(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		return 0, fmt.Errorf("topology: create network namespace %s: %w", name, r.err)
	}
	l.mu.Lock()
	l.names = append(l.names, name)
	l.mu.Unlock()
	return r.ns, nil
}

func deleteNamespace(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(netnsDir, name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("topology: delete namespace %s: %w", name, err)
	}
	return nil
}

// removeStale deletes lab namespaces whose creating process is gone, so a
// run killed before its Close does not leave namespaces behind for ever.
func removeStale() {
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "x")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			_ = deleteNamespace(e.Name())
		}
	}
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}

// Dial opens a connection from inside the pod: the socket is created in the
// pod's namespace, so it is captured by the pod's rules like the app's own.
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return nsrun.Dial(ctx, p.Path(), network, addr)
}

// WaitListening waits until addr accepts TCP connections from inside the
// pod, trying every 20 ms, or until ctx ends (the last dial error then).
func (p *Pod) WaitListening(ctx context.Context, addr netip.AddrPort) error {
	return poll(ctx, func() error {
		c, err := p.Dial(ctx, "tcp", addr.String())
		if err == nil {
			c.Close()
		}
		return err
	})
}

// poll calls try every 20 ms until it returns nil, or until ctx ends:
// then it returns try's last error.
func poll(ctx context.Context, try func() error) error {
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Echo is a TCP echo client run from inside the pod: it sends msg to addr,
// shuts down its write side (TCP half-close) and reads until the server
// closes, failing unless exactly msg came back.
func (p *Pod) Echo(ctx context.Context, addr string, msg []byte) error {
	c, err := p.Dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w", addr, p.Name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return fmt.Errorf("echo to %s: write: %w", addr, err)
	}
	if rerr != nil {
		return fmt.Errorf("echo from %s: read after half-close: %w", addr, rerr)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo from %s: got %d bytes back, want the %d sent", addr, len(got), len(msg))
	}
	return nil
}
