package topology

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Capture is a packet capture (tcpdump, read back with tshark) on a pod's link, taken from the
// bridge side, so it sees exactly what crosses the wire between pods.
type Capture struct {
	proc *Process
	// File is the pcap file being written.
	File string
	// DecodeAs are tshark's "-d" rules for reading the file, e.g.
	// "tcp.port==8080,tls": tshark takes a well-known port by its
	// protocol (8080 is HTTP to it), so mesh TLS there must be named.
	DecodeAs []string
}

// Capture starts tcpdump on the bridge-side end of pod's veth with the
// given capture filter (e.g. "tcp port 8080"), writing to a pcap file in
// dir. It returns once tshark is capturing.
func (l *Lab) Capture(pod *Pod, filter, dir string) (*Capture, error) {
	for _, tool := range []string{"tcpdump", "tshark"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("topology: %s not found: apt-get install %s", tool, tool)
		}
	}
	file := filepath.Join(dir, pod.Name+".pcap")
	// --immediate-mode hands each packet to tcpdump as it arrives (else
	// the kernel batches them in ring blocks and a short capture ends
	// before the first block is read); -U writes each one at once; -Z root
	// keeps tcpdump from dropping to a user that cannot write to dir.
	argv := []string{"tcpdump", "-n", "--immediate-mode", "-U", "-Z", "root", "-i", "v" + pod.Name, "-w", file}
	if filter != "" {
		argv = append(argv, filter)
	}
	br := &Pod{lab: l, Name: "bridge", NS: l.bridge}
	p, err := br.Start(argv, ProcOptions{})
	if err != nil {
		return nil, err
	}
	// tcpdump says "listening on" once the link is open and the filter
	// set: from then on every packet is recorded. (tshark announces itself
	// before its capture child is ready, which loses the first packets.)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.Output(), "listening on") {
		if p.Exited() || time.Now().After(deadline) {
			p.Stop(time.Second)
			return nil, fmt.Errorf("topology: tcpdump did not start on v%s: %s", pod.Name, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Capture{proc: p, File: file}, nil
}

// Stop ends the capture and waits until the file is complete. Packets
// reach tcpdump a moment after they cross the link, so Stop first gives
// the last ones time to arrive.
func (c *Capture) Stop() error {
	time.Sleep(50 * time.Millisecond)
	_ = c.proc.Signal(os.Interrupt)
	return c.proc.Wait(10 * time.Second)
}

// Fields runs tshark over the finished capture with a display filter and
// prints the named fields, one packet a line (tshark -T fields).
func (c *Capture) Fields(ctx context.Context, display string, fields ...string) (string, error) {
	argv := []string{"-n", "-r", c.File, "-T", "fields"}
	for _, d := range c.DecodeAs {
		argv = append(argv, "-d", d)
	}
	if display != "" {
		argv = append(argv, "-Y", display)
	}
	for _, f := range fields {
		argv = append(argv, "-e", f)
	}
	out, err := exec.CommandContext(ctx, "tshark", argv...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("tshark %s: %w: %s", strings.Join(argv, " "), err, ee.Stderr)
		}
		return "", err
	}
	return string(out), nil
}
