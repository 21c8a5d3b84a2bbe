package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"meshgate/demo"
	"meshgate/intercept"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--requests N]", `
Build a small mesh on this machine and show it working: five pods (network
namespaces joined by a bridge) run ordinary apps that know nothing of the
mesh. meshgate makes a mesh CA, gives four of the pods a SPIFFE identity
and enrolls them while they run; it sends real traffic between them over
IPv4 and IPv6, which the sidecars carry as mutual TLS 1.3, calls web's two
replicas by name (the client's sidecar answers the DNS and balances the
requests), shows that the fifth pod, without a sidecar, is refused and
that web's policy refuses the client's requests it does not allow (403,
with the rule and the reason), and
prints what flowed through
each sidecar, read from the sidecars' own /metrics. Everything it creates
is removed at the end, also on failure or Ctrl-C. Needs root.`, stderr)
	requests := fs.Int("requests", 40, "HTTP requests to send from client to web (twice as many go by name, to both replicas)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *requests < 1 {
		return fmt.Errorf("--requests %d: want at least 1", *requests)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (it creates network namespaces and iptables rules): run 'sudo meshgate demo' or 'make demo'")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	_, err = demo.Run(ctx, demo.Options{Requests: *requests, Self: self, Progress: func(s demo.Step, r *demo.Report) {
		printDemoStep(stdout, s, r)
	}})
	return err
}

// printDemoStep prints what the demo has just done.
func printDemoStep(w io.Writer, s demo.Step, r *demo.Report) {
	say := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	switch s {
	case demo.PodsMade:
		say("meshgate demo: %d pods, each a network namespace on bridge br0", len(r.Pods))
		for _, p := range r.Pods {
			say("  %-8s %-14s %-22s %s", p.Name, p.IPv4, p.IPv6, p.Role)
		}
	case demo.CertsIssued:
		say("\nmesh CA made for trust domain %s; a certificate issued to each pod", r.TrustDomain)
	case demo.Enrolling:
		say("\nenrolling the running pods (sidecar started in each namespace, then rules applied):")
	case demo.Enrolled:
		sc := r.Sidecars[len(r.Sidecars)-1]
		say("  %-8s sidecar pid %d, identity %s", sc.Pod, sc.PID, sc.ID)
	case demo.TrafficStarts:
		say("\ntraffic from client (an ordinary client: it does not know about the mesh):")
	case demo.SentByAddress:
		say("  client → web   %d HTTP requests, half IPv4 half IPv6, a new connection each: all 200, median %.2f ms",
			r.Requests, float64(r.Median.Microseconds())/1000)
	case demo.Downloaded:
		say("  client → web   %d MiB download, SHA-256 verified, %.0f MB/s", r.DownloadBytes>>20, float64(r.DownloadBytes)/1e6/r.DownloadTime.Seconds())
	case demo.Echoed:
		say("  client → echo  %d raw TCP sessions of %d KiB, client half-closes then reads the echo: all intact", r.EchoSessions, r.EchoBytes>>10)
	case demo.SentByName:
		say("  client → %s  %d HTTP requests by name, 4 at a time, balanced by client's sidecar: web %d, web2 %d",
			r.Service, r.ByName, r.Served["web"], r.Served["web2"])
	case demo.OutsiderRefused:
		say("  outsider → web plaintext from a pod without a sidecar: refused (mTLS strict)")
	case demo.PolicyDenied:
		say("\nweb's sidecar enforces a policy (its --config):")
		for _, l := range strings.Split(strings.TrimRight(r.Policy, "\n"), "\n") {
			say("    %s", l)
		}
		for _, d := range r.Denied {
			say("  client → web   %-17s %d %s", d.Request, d.Status, d.Reason)
		}
		say("  (web never saw them; 'meshgate policy explain' says the same offline)")
	case demo.Measured:
		say("\nwhat each sidecar saw (its /metrics on :%d):", intercept.MetricsPort)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "pod\tdirection\tconnections\tHTTP requests\tbytes app→peer\tbytes peer→app\tmTLS full\tresumed\tfailed\tplaintext refused\tpeers verified\t")
		for _, s := range r.Stats {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t\n", s.Pod, s.Direction, s.Connections, s.HTTPRequests,
				humanBytes(s.SentBytes), humanBytes(s.ReceivedBytes), s.Full, s.Resumed, s.Failed, s.PlaintextRefused, strings.Join(s.Peers, " "))
		}
		tw.Flush()
		say("\nEvery connection left client through its sidecar (outbound) and entered web or")
		say("echo through theirs (inbound), with the original destination kept; between the")
		say("sidecars it was mutual TLS 1.3, each side verifying the other's SPIFFE identity.")
		say("The sidecars told HTTP from raw TCP by the first bytes: HTTP went request by")
		say("request over one pooled HTTP/2 mTLS connection per destination (web got the")
		say("client's verified identity in X-Forwarded-Client-Cert), raw TCP as it was, and")
		say("repeated TCP connections resumed their TLS session. Asked by name, the client's")
		say("sidecar answered its DNS from its registry and spread its connections over both")
		say("replicas of web, each verified to present web's identity.")
	case demo.CleanedUp:
		if r.CleanupErr != nil {
			say("cleanup problems: %v", r.CleanupErr)
			return
		}
		say("\ncleaned up: rules removed, sidecars drained and stopped, namespaces deleted.")
	}
}

func humanBytes(v int64) string {
	switch {
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(v)/(1<<10))
	}
	return fmt.Sprintf("%d B", v)
}
