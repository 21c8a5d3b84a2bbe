package redirect

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"meshgate/nsrun"
)

// podNetns is a throwaway namespace with an address of its own (10.77.0.1
// on mg0, one end of a veth pair whose both ends are in the namespace)
// and, with route, a route to TEST-NET-1 over that link: a probe sent
// there that nothing captures goes to mg1, which has no address and
// drops it. Nothing can leave the namespace.
func podNetns(t *testing.T, route bool) string {
	t.Helper()
	path := newNetns(t)
	err := nsrun.Do(path, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mg0"}, PeerName: "mg1"}); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("mg1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		link, err := netlink.LinkByName("mg0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.77.0.1/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		if !route {
			return nil
		}
		_, dst, _ := net.ParseCIDR("192.0.2.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst})
	})
	if err != nil {
		t.Fatalf("set up the namespace: %v", err)
	}
	return path
}

func selfCheckConfig() Config {
	c := DefaultConfig()
	c.IPv6 = IPv6Off
	return c
}

// TestSelfCheckReal: the self-check passes on a namespace with the rules,
// and fails, saying what happened, when they are missing or broken.
func TestSelfCheckReal(t *testing.T) {
	needRoot(t)
	opts := func(path string) Options {
		return Options{NetnsPath: path, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))}
	}

	t.Run("rules in place", func(t *testing.T) {
		path := podNetns(t, true)
		c := selfCheckConfig()
		if err := Apply(t.Context(), c, opts(path)); err != nil {
			t.Fatal(err)
		}
		res, err := SelfCheck(t.Context(), c, opts(path))
		if err != nil {
			t.Fatal(err)
		}
		want := SelfCheckResult{
			Inbound:  "ok (a connection to 10.77.0.1:15999 arrived at port 15006)",
			Outbound: "ok (a connection to 192.0.2.1:80 arrived at port 15001)",
		}
		if res != want {
			t.Errorf("got  %+v\nwant %+v", res, want)
		}
	})

	t.Run("listed ports, no route out", func(t *testing.T) {
		path := podNetns(t, false)
		c := selfCheckConfig()
		c.InboundAllPorts, c.InboundPorts = false, []uint16{8080}
		if err := Apply(t.Context(), c, opts(path)); err != nil {
			t.Fatal(err)
		}
		res, err := SelfCheck(t.Context(), c, opts(path))
		if err != nil {
			t.Fatal(err)
		}
		want := SelfCheckResult{
			Inbound:  "ok (a connection to 10.77.0.1:8080 arrived at port 15006)",
			Outbound: "not checked (no route to 192.0.2.1 in the namespace)",
		}
		if res != want {
			t.Errorf("got  %+v\nwant %+v", res, want)
		}
	})

	t.Run("no rules", func(t *testing.T) {
		path := podNetns(t, true)
		_, err := SelfCheck(t.Context(), selfCheckConfig(), opts(path))
		var se *SelfCheckError
		if !errors.As(err, &se) {
			t.Fatalf("error %v, want a SelfCheckError", err)
		}
		want := "redirect: self-check inbound: a connection to 10.77.0.1:15999 should have been redirected to port 15006 with original destination 10.77.0.1:15999, but it was refused: it went to the port itself, where nothing listens; likely cause: the rules are not in effect"
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error:\n got %v\nwant %s...", err, want)
		}
	})

	t.Run("probe port not captured", func(t *testing.T) {
		// The rules capture 8080 only; the check expects every port.
		path := podNetns(t, true)
		c := selfCheckConfig()
		c.InboundAllPorts, c.InboundPorts = false, []uint16{8080}
		if err := Apply(t.Context(), c, opts(path)); err != nil {
			t.Fatal(err)
		}
		_, err := SelfCheck(t.Context(), selfCheckConfig(), opts(path))
		if err == nil || !strings.Contains(err.Error(), "self-check inbound: a connection to 10.77.0.1:15999 should have been redirected to port 15006") {
			t.Errorf("error %v, want the inbound check to fail", err)
		}
	})

	t.Run("outbound REDIRECT rule deleted", func(t *testing.T) {
		path := podNetns(t, true)
		c := selfCheckConfig()
		if err := Apply(t.Context(), c, opts(path)); err != nil {
			t.Fatal(err)
		}
		run(t, path, "iptables-nft", "-t", "nat", "-D", "MESHGATE_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001")
		_, err := SelfCheck(t.Context(), c, opts(path))
		var se *SelfCheckError
		if !errors.As(err, &se) || se.Direction != "outbound" {
			t.Fatalf("error %v, want an outbound SelfCheckError", err)
		}
		want := "redirect: self-check outbound: a connection to 192.0.2.1:80 should have been redirected to port 15001 with original destination 192.0.2.1:80, but it timed out after 2s: it went towards 192.0.2.1 itself; likely cause: the rules are not in effect"
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error:\n got %v\nwant %s...", err, want)
		}
	})

	t.Run("a proxy already runs", func(t *testing.T) {
		path := podNetns(t, true)
		c := selfCheckConfig()
		if err := Apply(t.Context(), c, opts(path)); err != nil {
			t.Fatal(err)
		}
		var lns []net.Listener
		err := nsrun.Do(path, func() error {
			for _, p := range []uint16{15001, 15006} {
				ln, err := net.Listen("tcp4", netip.AddrPortFrom(netip.IPv4Unspecified(), p).String())
				if err != nil {
					return err
				}
				lns = append(lns, ln)
			}
			return nil
		})
		defer func() {
			for _, ln := range lns {
				ln.Close()
			}
		}()
		if err != nil {
			t.Fatal(err)
		}
		res, err := SelfCheck(t.Context(), c, opts(path))
		if err != nil {
			t.Fatal(err)
		}
		want := SelfCheckResult{
			Inbound:  "not checked (port 15006 is in use, likely by the proxy already running; the check needs it free)",
			Outbound: "not checked (port 15001 is in use, likely by the proxy already running; the check needs it free)",
		}
		if res != want {
			t.Errorf("got  %+v\nwant %+v", res, want)
		}
	})
}
